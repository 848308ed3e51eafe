"""The API against a real server on 127.0.0.1: listings (multipart, JSON base64, data URL),
OpenAI chat completions through the real ``openai`` client, health, metrics, the page files,
API key on and off, CORS on and off."""

from __future__ import annotations

import base64

import httpx
import openai
import pytest
from eval_fixtures import LISTING
from serve_fixtures import COLORS, png_bytes

from vlmtune.data.prompts import parse_listing

EXPECTED = parse_listing(LISTING)


def _data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _check_listing(row: dict, index: int) -> None:
    assert row["index"] == index
    assert row["raw_text"] == LISTING
    assert row["parsed"] is True and row["errors"] == {}
    assert (row["title"], row["category3_code"], row["full_price"]) == (
        EXPECTED.title,
        EXPECTED.category,
        EXPECTED.price,
    )
    assert row["timing"]["batch_size"] >= 1 and row["timing"]["total_ms"] > 0


@pytest.mark.slow
def test_listings_multipart_json_and_data_url(serve):
    server = serve()
    with httpx.Client(base_url=server.url, timeout=60) as client:
        files = [
            ("images", (f"p{i}.png", png_bytes(c), "image/png")) for i, c in enumerate(COLORS[:2])
        ]
        response = client.post("/v1/listings", files=files)
        assert response.status_code == 200, response.text
        rows = response.json()["listings"]
        assert [r["filename"] for r in rows] == ["p0.png", "p1.png"]
        for i, row in enumerate(rows):
            _check_listing(row, i)

        bare = base64.b64encode(png_bytes(COLORS[2])).decode()
        response = client.post(
            "/v1/listings", json={"images": [bare, _data_url(png_bytes(COLORS[3]))]}
        )
        assert response.status_code == 200, response.text
        for i, row in enumerate(response.json()["listings"]):
            _check_listing(row, i)


@pytest.mark.slow
def test_chat_completions_with_the_openai_client(serve):
    server = serve()
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    completion = client.chat.completions.create(
        model="listing-model",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is shown in this image?"},
                    {"type": "image_url", "image_url": {"url": _data_url(png_bytes(COLORS[0]))}},
                ],
            }
        ],
    )
    assert completion.choices[0].message.content == LISTING
    assert completion.choices[0].finish_reason == "stop"
    assert completion.object == "chat.completion"


@pytest.mark.slow
def test_health_metrics_and_page_files(serve):
    server = serve()
    with httpx.Client(base_url=server.url, timeout=60) as client:
        health = client.get("/health").json()
        assert health == {
            "status": "ok",
            "model": "listing-model",
            "model_loaded": True,
            "queue_depth": 0,
            "max_queue": 64,
        }
        files = [("images", ("a.png", png_bytes(COLORS[0]), "image/png"))] * 3
        assert client.post("/v1/listings", files=files).status_code == 200
        assert (
            client.post(
                "/v1/listings", content=b"x", headers={"content-type": "text/plain"}
            ).status_code
            == 415
        )
        text = client.get("/metrics").text
        assert 'vlmtune_requests_total{endpoint="/v1/listings",status="200"} 1' in text
        assert 'vlmtune_requests_total{endpoint="/v1/listings",status="415"} 1' in text
        assert 'vlmtune_requests_total{endpoint="/health",status="200"} 1' in text
        assert "vlmtune_batch_size_count 1" in text and "vlmtune_batch_size_sum 3.0" in text
        assert 'vlmtune_batch_size_bucket{le="2.0"} 0' in text
        assert 'vlmtune_batch_size_bucket{le="4.0"} 1' in text
        assert "vlmtune_queue_wait_seconds_count 3" in text
        assert "vlmtune_generation_seconds_count 1" in text
        assert "vlmtune_model_loaded 1" in text and "vlmtune_queue_depth 0" in text
        page = client.get("/")
        assert page.status_code == 200 and "/static/page.js" in page.text
        assert "function downloadCsv" in client.get("/static/page.js").text
        assert client.get("/static/page.css").headers["content-type"].startswith("text/css")
        assert client.get("/static/..%2Fargs.py").status_code == 404


@pytest.mark.slow
def test_api_key_on_every_endpoint_but_health_and_the_page(serve, monkeypatch):
    monkeypatch.setenv("VLMTUNE_API_KEY", "from-the-env")
    server = serve(api_key="s3cret-key")
    image = {"images": [_data_url(png_bytes(COLORS[0]))]}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for open_path in ("/health", "/", "/static/page.js"):  # no data in them
            assert client.get(open_path).status_code == 200, open_path
        for method, path, body in (
            ("GET", "/metrics", None),
            ("GET", "/static/other.js", None),
            ("POST", "/v1/listings", image),
            ("POST", "/v1/chat/completions", {"messages": []}),
        ):
            for headers in (
                {},
                {"Authorization": "Bearer wrong"},
                {"Authorization": "Bearer from-the-env"},
            ):
                response = client.request(method, path, json=body, headers=headers)
                assert response.status_code == 401, (path, headers)
                assert response.headers["www-authenticate"] == "Bearer"
        good = {"Authorization": "Bearer s3cret-key"}
        assert client.get("/metrics", headers=good).status_code == 200
        assert client.post("/v1/listings", json=image, headers=good).status_code == 200
    chat = openai.OpenAI(base_url=server.url + "/v1", api_key="s3cret-key", max_retries=0)
    content = [{"type": "image_url", "image_url": {"url": _data_url(png_bytes(COLORS[1]))}}]
    answer = chat.chat.completions.create(
        model="m", messages=[{"role": "user", "content": content}]
    )
    assert answer.choices[0].message.content == LISTING
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(
            base_url=server.url + "/v1", api_key="nope", max_retries=0
        ).chat.completions.create(model="m", messages=[{"role": "user", "content": content}])


def test_api_key_from_the_environment(loaded, monkeypatch):
    from vlmtune.serving.args import ServeArgs

    monkeypatch.setenv("VLMTUNE_API_KEY", "env-key")
    assert ServeArgs(model=loaded.path).api_key == "env-key"
    monkeypatch.delenv("VLMTUNE_API_KEY")
    assert ServeArgs(model=loaded.path).api_key is None


@pytest.mark.slow
def test_cors_only_with_an_origin(serve):
    origin = {"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"}
    closed = serve()
    with httpx.Client(base_url=closed.url, timeout=60) as client:
        assert "access-control-allow-origin" not in client.get("/health", headers=origin).headers
        assert (
            "access-control-allow-origin"
            not in client.options("/v1/listings", headers=origin).headers
        )
    opened = serve(cors_origin=["https://shop.example"], api_key="k")
    with httpx.Client(base_url=opened.url, timeout=60) as client:
        preflight = client.options("/v1/listings", headers=origin)
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://shop.example"
        other = client.get("/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
