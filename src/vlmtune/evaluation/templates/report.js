// Sorting the samples table by price error: a click on its header sorts ascending, the next
// descending; #sort=price-asc or #sort=price-desc in the address clicks it once or twice.
(function () {
  var table = document.getElementById('samples');
  var th = document.getElementById('sort-price');
  if (!table || !th) { return; }
  function key(row) {
    var v = parseFloat(row.getAttribute('data-price-ape'));
    return isNaN(v) ? Infinity : v;  // an unread price ("inf") sorts last either way
  }
  function sortRows(dir) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a), y = key(b);
      if (x === y) { return parseInt(a.getAttribute('data-index')) - parseInt(b.getAttribute('data-index')); }
      if (x === Infinity) { return 1; }
      if (y === Infinity) { return -1; }
      return dir * (x - y);
    });
    rows.forEach(function (r) { body.appendChild(r); });
    table.setAttribute('data-sorted', dir > 0 ? 'price-asc' : 'price-desc');
    th.setAttribute('aria-sort', dir > 0 ? 'ascending' : 'descending');
  }
  th.addEventListener('click', function () {
    sortRows(table.getAttribute('data-sorted') === 'price-asc' ? -1 : 1);
  });
  var m = /sort=price-(asc|desc)/.exec(window.location.hash);
  if (m) { th.click(); if (m[1] === 'desc') { th.click(); } }
})();
