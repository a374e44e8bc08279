"""Where stored files and validation results live, behind small Protocols.

    blobs.py    BlobStore: the bytes of uploads (a directory by default)
    results.py  ResultsReader / ResultsWriter: verdicts, files, progress (SQLite by default)

The ingester writes blobs, the validator reads blobs and writes results, the gateway reads
results. Each sees only its Protocol, so another store (S3, PostgreSQL) is one new class.
"""
