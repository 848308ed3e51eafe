"""``vlmtune prepare``: from a catalog to an image dataset the trainer reads.

The public fine-tuning scripts do this step with a sequential ``requests.get``
loop that prints and skips failures. Here the same job is concurrent,
resumable and accounts for every row (:func:`prepare_dataset`):

1. the output folder is claimed before any work (:mod:`.folder`: missing, empty,
   or this catalog's earlier output; anything else needs ``--overwrite``);
2. the catalog is loaded (:func:`vlmtune.data.catalog.load_catalog`); its
   rejects become ``failures.csv`` rows with stage ``catalog``;
3. rows are grouped by image reference (a duplicate URL is fetched once) and
   each reference is classified (:mod:`.references`: http(s) URL, local file, or
   refused) and processed in a thread pool (:mod:`.pool`): reuse of an image
   stored by an earlier run (checked by SHA-256, no request made), else an
   http(s) download (:mod:`vlmtune.data.download`, under the URL policy of
   :mod:`vlmtune.data.urls`) or a copy of a file relative to the catalog's
   folder, then validation and RGB conversion (:mod:`vlmtune.data.images`),
   then an atomic write to ``images/``;
4. each stored image is appended to a journal as soon as it is written
   (:mod:`.journal`), so a run killed at any point (SIGINT, SIGKILL) resumes
   where it stopped;
5. duplicate groups (:mod:`.duplicates`): rows sharing a product id (over all usable
   catalog rows, so snapshots of one product), the same decoded pixels or a
   near-duplicate photo are one group, and every group goes to one split, chosen from
   its members' ids and the seed (:mod:`vlmtune.data.group_splits`), so adding products
   that join no group moves no existing group. Groups whose rows disagree on title, category or price are conflicts,
   resolved by ``--on-conflict`` (``keep`` by default) and listed in ``conflicts.csv``;
6. the manifest (``dataset.parquet``, ``dataset.csv``), ``failures.csv``,
   ``vlmtune_dataset.json`` and ``prepare_report.json`` are written atomically
   at the end (:mod:`.outputs`); then the journal is removed. A run that keeps
   no row at all writes ``failures.csv`` and ends with :class:`NothingKeptError`.

Stages of ``failures.csv``: ``catalog`` (row unusable in the catalog itself),
``url`` (reference refused before any I/O: unsupported scheme, malformed URL,
absolute or escaping local path), ``download`` (HTTP failure, or a host the URL
policy forbids), ``local`` (local file missing, unreadable or too large),
``image`` (bytes are not a usable image: HTML, a format other than the common
photo formats, truncated, corrupt, decompression bomb), ``store`` (writing the
image failed), ``conflict`` (taken out by ``--on-conflict``). Each reason starts
with a kind and a colon.
"""

from vlmtune.data.prepare.args import PrepareArgs, PrepareError
from vlmtune.data.prepare.outputs import FAILURE_COLUMNS, STAGES, PrepareReport
from vlmtune.data.prepare.run import NothingKeptError, check_unique_stems, prepare_dataset

__all__ = [
    "FAILURE_COLUMNS",
    "STAGES",
    "NothingKeptError",
    "PrepareArgs",
    "PrepareError",
    "PrepareReport",
    "check_unique_stems",
    "prepare_dataset",
]
