import pytest

from dukungan.election import ScanLimits
from dukungan.scans import check_scan, count_pdf_pages, link_scan, scan_directory, scan_sets

LIMITS = ScanLimits(max_bytes=10_000, max_pages=2)


def pdf(pages: int) -> bytes:
    objs = b"".join(b"%d 0 obj << /Type /Page /Parent 1 0 R >> endobj\n" % (i + 3) for i in range(pages))
    return b"%PDF-1.4\n1 0 obj << /Type /Pages /Count " + str(pages).encode() + b" >> endobj\n" + objs + b"%%EOF"


def test_types_by_magic_bytes():
    assert check_scan("a.pdf", pdf(1), LIMITS).content_type == "application/pdf"
    assert check_scan("a.jpg", b"\xff\xd8\xff\xe0rest", LIMITS).content_type == "image/jpeg"
    for bad in (b"\x89PNG\r\n\x1a\n", b"", b"PK\x03\x04", b"GIF89a"):
        r = check_scan("x.pdf", bad, LIMITS)
        assert not r.ok and "not a PDF or JPEG" in r.problems[0]


def test_size_and_pages():
    assert count_pdf_pages(pdf(3)) == 3  # /Pages is not a page
    assert check_scan("a.pdf", pdf(2), LIMITS).ok
    r = check_scan("a.pdf", pdf(3), LIMITS)
    assert not r.ok and "3 pages" in r.problems[0]
    big = b"\xff\xd8\xff" + b"0" * 20_000
    r = check_scan("a.jpg", big, LIMITS)
    assert not r.ok and "limit 10,000" in r.problems[0]


@pytest.mark.parametrize("name,meta,want", [
    ("3171014505900001_ktp.jpg", None, ("3171014505900001", "ktp")),
    ("3171014505900001_pernyataan.pdf", None, ("3171014505900001", "statement")),
    ("KTP-3171014505900001.JPG", None, ("3171014505900001", "ktp")),
    ("B1-KWK 3171014505900001.pdf", None, ("3171014505900001", "statement")),
    ("scan001.pdf", {"nik": "3171014505900001", "kind": "statement"}, ("3171014505900001", "statement")),
    ("3171014505900001.pdf", {"kind": "ktp"}, ("3171014505900001", "ktp")),
    ("317101450590000_ktp.jpg", None, None),  # 15 digits
    ("31710145059000011_ktp.jpg", None, None),  # 17 digits
    ("3171014505900001.pdf", None, None),  # no kind
])
def test_link(name, meta, want):
    got = link_scan(name, meta)
    assert (got and (got.nik, got.kind)) == want or (got is None and want is None)


def test_scan_directory(tmp_path):
    (tmp_path / "3171014505900001_ktp.jpg").write_bytes(b"\xff\xd8\xff\xe0")
    (tmp_path / "3171014505900001_pernyataan.pdf").write_bytes(pdf(1))
    (tmp_path / "3171014505900002_ktp.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "readme.txt").write_text("x")
    res = scan_directory(tmp_path, LIMITS)
    assert res.sets.ktp == {"3171014505900001"} and res.sets.statement == {"3171014505900001"}
    assert len(res.checks) == 1 and res.unlinked == ["readme.txt"]
    assert scan_sets([]).ktp == frozenset()
