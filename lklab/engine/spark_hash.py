"""Spark's `xxhash64(col1, col2, ...)` over an Arrow table, vectorised with numpy, so a snapshot's
checksum (lklab.engine.snapshots) is verified without a JVM and equals the one Spark computed when
it wrote the snapshot.

Spark's definition (catalyst XxHash64, seed 42): the columns are folded left to right, each
non-null value hashed with the running hash as its seed (a null leaves it unchanged). A long or a
timestamp (its microseconds) is hashed as XXH64 of its 8 little-endian bytes, a string as XXH64
of its UTF-8 bytes. Standard XXH64 (xxhash.com); all arithmetic is modulo 2^64, which numpy's
uint64 arrays give by wrapping."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SPARK_SEED = 42
P1 = np.uint64(0x9E3779B185EBCA87)
P2 = np.uint64(0xC2B2AE3D27D4EB4F)
P3 = np.uint64(0x165667B19E3779F9)
P4 = np.uint64(0x85EBCA77C2B2AE63)
P5 = np.uint64(0x27D4EB2F165667C5)


def _rotl(x: np.ndarray, r: int) -> np.ndarray:
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


def _round(acc: np.ndarray, lane: np.ndarray) -> np.ndarray:
    return _rotl(acc + lane * P2, 31) * P1


def _merge(h: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (h ^ _round(np.zeros_like(v), v)) * P1 + P4


def _avalanche(h: np.ndarray) -> np.ndarray:
    h = (h ^ (h >> np.uint64(33))) * P2
    h = (h ^ (h >> np.uint64(29))) * P3
    return h ^ (h >> np.uint64(32))


def _words(block: np.ndarray, at: int, width: int) -> np.ndarray:
    """Little-endian words of `width` bytes starting at byte `at` of each row of `block`, as uint64."""
    return np.ascontiguousarray(block[:, at:at + width]).view("<u8" if width == 8 else "<u4")[:, 0].astype(np.uint64)


def xxh64_bytes(block: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """XXH64 of each row of `block` (rows × length uint8, all the same length) with its own seed."""
    length = block.shape[1]
    at = 0
    with np.errstate(over="ignore"):
        if length >= 32:
            v = [seed + P1 + P2, seed + P2, seed.copy(), seed - P1]
            while at + 32 <= length:
                v = [_round(v[i], _words(block, at + 8 * i, 8)) for i in range(4)]
                at += 32
            h = _rotl(v[0], 1) + _rotl(v[1], 7) + _rotl(v[2], 12) + _rotl(v[3], 18)
            for lane in v:
                h = _merge(h, lane)
        else:
            h = seed + P5
        h = h + np.uint64(length)
        while at + 8 <= length:
            h = _rotl(h ^ _round(np.zeros_like(h), _words(block, at, 8)), 27) * P1 + P4
            at += 8
        if at + 4 <= length:
            h = _rotl(h ^ (_words(block, at, 4) * P1), 23) * P2 + P3
            at += 4
        while at < length:
            h = _rotl(h ^ (block[:, at].astype(np.uint64) * P5), 11) * P1
            at += 1
        return _avalanche(h)


def _hash_longs(values: np.ndarray, seed: np.ndarray) -> np.ndarray:
    return xxh64_bytes(np.ascontiguousarray(values.astype("<i8")).view(np.uint8).reshape(-1, 8), seed)


def _hash_strings(column: pa.Array, seed: np.ndarray) -> np.ndarray:
    """Each string's UTF-8 bytes, hashed in groups of equal length (one vectorised pass each)."""
    column = column.cast(pa.large_string())
    offsets = np.frombuffer(column.buffers()[1], dtype=np.int64)[column.offset:column.offset + len(column) + 1]
    data = np.frombuffer(column.buffers()[2], dtype=np.uint8) if column.buffers()[2] is not None else np.zeros(0, np.uint8)
    starts, lengths = offsets[:-1], np.diff(offsets)
    out = seed.copy()
    for length in np.unique(lengths):
        rows = np.nonzero(lengths == length)[0]
        block = data[starts[rows, None] + np.arange(length)] if length else np.zeros((len(rows), 0), np.uint8)
        out[rows] = xxh64_bytes(block, seed[rows])
    return out


def _hash_column(column: pa.Array, seed: np.ndarray) -> np.ndarray:
    kind = column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return _hash_strings(column, seed)
    if pa.types.is_timestamp(kind):
        return _hash_longs(column.cast(pa.timestamp("us", tz=kind.tz)).cast(pa.int64()).to_numpy(zero_copy_only=False), seed)
    if pa.types.is_int64(kind):
        return _hash_longs(column.to_numpy(zero_copy_only=False), seed)
    raise TypeError(f"no Spark xxhash64 here for Arrow type {kind}")


def xxhash64(table: pa.Table) -> np.ndarray:
    """Spark's xxhash64 over all columns of `table`, in column order: one signed int64 per row."""
    hashes = np.full(table.num_rows, SPARK_SEED, dtype=np.uint64)
    for column in table.columns:
        column = column.combine_chunks()
        valid = np.ones(len(column), bool) if column.null_count == 0 else pc.is_valid(column).to_numpy(zero_copy_only=False)
        filled = column if column.null_count == 0 else column.fill_null(_filler(column.type))
        hashed = _hash_column(filled, hashes)
        hashes = np.where(valid, hashed, hashes)
    return hashes.view(np.int64)


def _filler(kind: pa.DataType) -> pa.Scalar:
    """A placeholder for nulls, hashed and then discarded (a null leaves the running hash as is)."""
    if pa.types.is_timestamp(kind):
        return pa.scalar(0, type=kind)
    return pa.scalar("" if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind) else 0, type=kind)


def exact_sum(values: np.ndarray) -> int:
    """The exact sum of int64 values (Spark sums them as decimal(38,0)): high and low halves apart."""
    high, low = values >> 32, values & 0xFFFFFFFF
    return int(high.sum(dtype=np.int64)) * (1 << 32) + int(low.sum(dtype=np.int64))
