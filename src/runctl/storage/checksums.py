"""The checksums S3 keeps, computed locally: SHA-256 of a whole object, or of a multipart one.

A single PUT with ChecksumAlgorithm=SHA256 keeps the base64 SHA-256 of the bytes. A multipart
upload keeps a composite checksum: the SHA-256 of the parts' raw SHA-256 digests, concatenated in
part order, in base64, followed by `-<number of parts>`. Comparing what HEAD reads back with what
was computed here from the local file proves the object holds exactly those bytes.
"""

from __future__ import annotations

import base64
import hashlib
import os
from typing import List, Optional

ALGORITHM = "SHA256"
MAX_PARTS = 10000
MIN_PART_SIZE = 5 * 1024 * 1024  # S3's smallest part (all but the last)
READ_CHUNK = 1024 * 1024


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def sha256_b64(data: bytes) -> str:
    return b64(hashlib.sha256(data).digest())


def composite(part_digests: List[bytes]) -> str:
    """The checksum S3 reports for a multipart object with these parts' raw SHA-256 digests."""
    return "%s-%d" % (b64(hashlib.sha256(b"".join(part_digests)).digest()), len(part_digests))


def part_size_for(size: int, wanted: int) -> int:
    """`wanted`, grown (in whole MiB) until `size` fits in MAX_PARTS parts."""
    part = max(1, wanted)
    while size > part * MAX_PARTS:
        part += 1024 * 1024
    return part


def part_count(size: int, part_size: int) -> int:
    return max(1, -(-size // part_size))


def file_checksum(path: str, part_size: Optional[int]) -> str:
    """What S3 keeps for `path` uploaded whole (part_size None) or in parts of `part_size`.

    A downloader checks a file with this and the manifest's `part_size`, as the uploader did.
    """
    if part_size is None:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(READ_CHUNK), b""):
                digest.update(chunk)
        return b64(digest.digest())
    digests = []
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        for _ in range(part_count(size, part_size)):
            part = hashlib.sha256()
            left = part_size
            while left > 0:
                chunk = handle.read(min(READ_CHUNK, left))
                if not chunk:
                    break
                part.update(chunk)
                left -= len(chunk)
            digests.append(part.digest())
    return composite(digests)
