"""File access for shards, outputs and manifests.

Local paths use the OS directly (memory-mapped Parquet reads, atomic
``os.replace``). Anything with a scheme (``gs://``, ``s3://``, ...) goes through
Beam's ``FileSystems``, so every filesystem Beam supports works. On an object store a
rename is Beam's copy + delete: the final name appears only once the whole object has
been written (an upload is itself all-or-nothing), and a reader never sees a partial
file. A filesystem's settings (``--s3_endpoint_url``, credentials, ...) come from the
run's pipeline options: :func:`set_options` hands them to this process's
``FileSystems`` (workers get them from Beam).
"""
from __future__ import annotations

import dataclasses
import glob as _glob
import json
import os
import threading
import uuid
from collections.abc import Iterator
from typing import Any, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from thresher.schemas.documents import InputError


def is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def set_options(args: Optional[list[str]] = None, options: Optional[dict] = None) -> None:
    """Give this process's Beam ``FileSystems`` the run's pipeline options (``args``: Beam
    flags such as ``--s3_endpoint_url=...``; ``options``: the config's ``pipeline_options``,
    which the flags override). Beam sets them when a pipeline is built; thresher's own file
    access before that (shard footers, the output directory's run file) needs them too."""
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions
    flags = [f"--{k}={v}" for k, v in (options or {}).items() if not isinstance(v, bool)]
    flags += [f"--{k}" for k, v in (options or {}).items() if v is True]
    FileSystems.set_options(PipelineOptions(flags + list(args or [])))


def _fs():
    from apache_beam.io.filesystems import FileSystems
    _share_s3_clients()
    return FileSystems


class _SharedS3Session:
    """What Beam's S3 client gets for ``boto3.session.Session()``: ``client(...)`` hands out one
    boto3 client per process and settings (boto3 clients are thread-safe)."""

    def __init__(self, boto3):
        self._boto3 = boto3
        self._clients: dict = {}
        self._lock = threading.Lock()

    def client(self, *args, **kwargs):
        key = (os.getpid(), args, tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
        with self._lock:
            c = self._clients.get(key)
            if c is None:
                c = self._clients[key] = self._boto3.session.Session().client(*args, **kwargs)
            return c


class _Boto3ForBeam:
    """The ``boto3`` module as Beam's S3 client sees it, with sessions that share clients."""

    def __init__(self, boto3):
        self._boto3 = boto3
        shared = _SharedS3Session(boto3)
        self.session = type("session", (), {"Session": staticmethod(lambda: shared)})

    def __getattr__(self, name):
        return getattr(self._boto3, name)


def _share_s3_clients() -> None:
    """Beam 2.77's S3 filesystem builds a new boto3 session and client for every file
    operation (0.3-0.4 s of CPU each: 165 of them were 63 s of a 74 s run on 1,500
    documents); one client per process and settings makes that cost once."""
    global _S3_SHARED
    if _S3_SHARED:
        return
    _S3_SHARED = True
    try:
        from apache_beam.io.aws.clients.s3 import boto3_client
    except ImportError:         # the aws extra is not installed: no s3:// at all
        return
    if boto3_client.boto3 is not None and not isinstance(boto3_client.boto3, _Boto3ForBeam):
        boto3_client.boto3 = _Boto3ForBeam(boto3_client.boto3)


_S3_SHARED = False


def _base(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def _local(path: str) -> str:
    return path[len("file://"):] if path.startswith("file://") else path


def join(*parts: str) -> str:
    if is_remote(parts[0]):
        return _fs().join(*parts)
    return os.path.join(*parts)


def exists(path: str) -> bool:
    if is_remote(path):
        return _fs().exists(path)
    return os.path.exists(_local(path))


def makedirs(path: str) -> None:
    if not is_remote(path):
        os.makedirs(_local(path), exist_ok=True)


def list_dir(path: str, suffix: str = "") -> list[str]:
    """The files directly under ``path`` whose names end in ``suffix`` (no temporaries)."""
    if is_remote(path):
        res = _fs().match([join(path, "*" + suffix)])[0]
        return sorted(m.path for m in res.metadata_list if not _base(m.path).startswith(".tmp-"))
    p = _local(path)
    if not os.path.isdir(p):
        return []
    return sorted(os.path.join(p, f) for f in os.listdir(p) if f.endswith(suffix) and not f.startswith(".tmp-"))


def remove(path: str) -> None:
    """Remove a file, or a directory with everything under it (on an object store: the
    object of that name, else every object under the prefix ``path/``)."""
    if is_remote(path):
        fs = _fs()
        if fs.exists(path):
            fs.delete([path])
            return
        under = [m.path for m in fs.match([join(path, "**")])[0].metadata_list]
        for i in range(0, len(under), 1000):
            fs.delete(under[i:i + 1000])
        return
    p = _local(path)
    if os.path.isdir(p):
        import shutil
        shutil.rmtree(p, ignore_errors=True)
    elif os.path.exists(p):
        os.remove(p)


def open_read(path: str):
    if is_remote(path):
        from apache_beam.io.filesystems import CompressionTypes
        return _fs().open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    return open(_local(path), "rb")


def open_write(path: str):
    """A raw writable file (no rename: see AtomicWriter for atomic writes)."""
    if is_remote(path):
        from apache_beam.io.filesystems import CompressionTypes
        return _fs().create(path, compression_type=CompressionTypes.UNCOMPRESSED)
    os.makedirs(os.path.dirname(_local(path)) or ".", exist_ok=True)
    return open(_local(path), "wb")


def _tmp_name(path: str) -> str:
    d, base = os.path.split(path) if not is_remote(path) else path.rsplit("/", 1)
    return (os.path.join(d, f".tmp-{uuid.uuid4().hex[:8]}-{base}") if not is_remote(path)
            else f"{d}/.tmp-{uuid.uuid4().hex[:8]}-{base}")


def rename(src: str, dst: str) -> None:
    """Replace ``dst`` by ``src``. Local: ``os.replace``. Remote: Beam's rename (on S3 and GCS a
    copy onto ``dst``, which replaces it in one step, then the delete of ``src``); a
    filesystem whose rename refuses an existing target gets ``dst`` deleted first."""
    if is_remote(src):
        fs = _fs()
        try:
            fs.rename([src], [dst])
        except Exception:
            if not fs.exists(dst) or not fs.exists(src):
                raise
            fs.delete([dst])
            fs.rename([src], [dst])
    else:
        os.replace(_local(src), _local(dst))


class AtomicWriter:
    """Write to a temporary name in the target directory; rename on ``commit``."""

    def __init__(self, path: str):
        self.path = path
        self.tmp = _tmp_name(path)
        self.f = open_write(self.tmp)

    def commit(self) -> None:
        self.f.close()
        rename(self.tmp, self.path)

    def abort(self) -> None:
        try:
            self.f.close()
        finally:
            try:
                remove(self.tmp)
            except OSError:
                pass


def write_json(path: str, obj: Any) -> None:
    w = AtomicWriter(path)
    try:
        w.f.write(json.dumps(obj, indent=2, sort_keys=True, default=str).encode("utf-8"))
        w.commit()
    except BaseException:
        w.abort()
        raise


def read_json(path: str) -> Optional[dict]:
    if not exists(path):
        return None
    with open_read(path) as f:
        return json.loads(f.read().decode("utf-8"))


class ParquetOut:
    """An atomically written Parquet file with a fixed schema."""

    def __init__(self, path: str, schema: pa.Schema, compression: str = "zstd"):
        self.path = path
        self.schema = schema
        self.w = AtomicWriter(path)
        comp = None if compression == "none" else compression
        self.pw = pq.ParquetWriter(self.w.f, schema, compression=comp)
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self.pw.write_table(table.select(self.schema.names).cast(self.schema), row_group_size=64 * 1024)
        self.rows += table.num_rows

    def commit(self) -> None:
        self.pw.close()
        self.w.commit()

    def abort(self) -> None:
        try:
            self.pw.close()
        except Exception:
            pass
        self.w.abort()


# --- shard discovery -------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Shard:
    index: int          # position in the sorted shard list
    path: str           # full path / URI
    rel: str            # path relative to the input base (used for derived ids)
    name: str           # output file stem, unique per run
    num_rows: int
    size: int
    fingerprint: str    # cheap identity of the input file (size, rows, schema)


def _base_of(pattern: str) -> str:
    """The directory part of a glob pattern before the first wildcard."""
    cut = min([i for i, ch in enumerate(pattern) if ch in "*?["] + [len(pattern)])
    head = pattern[:cut]
    return head if head.endswith("/") else (head.rsplit("/", 1)[0] + "/" if "/" in head else "")


def _hidden_under(path: str, base: str) -> bool:
    """Is ``path`` under a ``_``- or ``.``-named directory (or itself so named) below ``base``?"""
    rel = path[len(base):] if path.startswith(base) else path.rsplit("/", 1)[-1]
    return any(part.startswith(("_", ".")) for part in rel.replace(os.sep, "/").split("/") if part)


def _remote_files(pattern: str) -> dict[str, int]:
    """path -> size of the Parquet files a remote file, directory or glob names. A directory is
    searched recursively, skipping ``_``/``.`` directories and files (as locally)."""
    fs = _fs()
    if any(ch in pattern for ch in "*?["):
        metas = fs.match([pattern])[0].metadata_list
        return {m.path: int(m.size_in_bytes) for m in metas if not _base(m.path).startswith(".tmp-")}
    if pattern.endswith(".parquet"):
        metas = fs.match([pattern])[0].metadata_list
        got = {m.path: int(m.size_in_bytes) for m in metas if m.path == pattern}
        if got:
            return got
    base = pattern.rstrip("/") + "/"
    metas = fs.match([base + "**.parquet"])[0].metadata_list
    return {m.path: int(m.size_in_bytes) for m in metas if not _hidden_under(m.path, base)}


def discover(pattern: str) -> list[str]:
    """Expand a file, directory or glob into a sorted list of Parquet files."""
    if is_remote(pattern):
        return sorted(_remote_files_or_none(pattern) or {})
    p = _local(pattern)
    if os.path.isdir(p):
        files = [os.path.join(dp, f) for dp, _, fs in os.walk(p) for f in fs if f.endswith(".parquet")]
        files = [f for f in files if not any(part.startswith(("_", ".")) for part in
                                             os.path.relpath(f, p).split(os.sep))]
    elif any(ch in p for ch in "*?["):
        files = [f for f in _glob.glob(p, recursive=True) if os.path.isfile(f)]
    elif os.path.isfile(p):
        files = [p]
    else:
        raise InputError(f"input {pattern!r} does not exist")
    return sorted(os.path.abspath(f) for f in files)


def size(path: str) -> int:
    """Bytes of a file (0 if it cannot be read)."""
    try:
        if is_remote(path):
            metas = _fs().match([path])[0].metadata_list
            return int(metas[0].size_in_bytes) if metas else 0
        return os.path.getsize(_local(path))
    except Exception:  # noqa: BLE001
        return 0


def _stem(rel: str) -> str:
    s = rel[:-8] if rel.endswith(".parquet") else rel
    return s.replace("/", "__").replace(os.sep, "__").lstrip(".") or "shard"


def _footer_digest(md) -> str:
    """A digest of the Parquet footer: row groups with their sizes, offsets and column
    statistics, so a shard rewritten with other content (same size or not) has another
    identity. Reading the footer is already done for the row counts; no data is read."""
    import hashlib
    h = hashlib.sha256()
    for i in range(md.num_row_groups):
        rg = md.row_group(i)
        h.update(f"{rg.num_rows}|{rg.total_byte_size}".encode())
        for j in range(rg.num_columns):
            c = rg.column(j)
            st = c.statistics
            h.update(f"|{c.file_offset}|{c.total_compressed_size}|{c.data_page_offset}".encode())
            if st is not None and st.has_min_max:
                h.update(repr((st.min, st.max, st.null_count)).encode()[:256])
    return h.hexdigest()[:16]


def _remote_files_or_none(pattern: str) -> Optional[dict[str, int]]:
    if not is_remote(pattern):
        return None
    try:
        return _remote_files(pattern)
    except Exception as e:  # noqa: BLE001 - a missing bucket, no credentials, no such endpoint
        raise InputError(f"input {pattern!r} cannot be listed ({type(e).__name__}: "
                         f"{(str(e).splitlines() or [''])[0]})") from None


def describe_shards(pattern: str, text_column: str, id_column: Optional[str],
                    exclude: Optional[str] = None) -> list[Shard]:
    """Discover shards and check every footer before work starts (clear errors).

    ``exclude``: the run's output directory; files thresher writes there (kept/,
    rejected/, _work/, ...) are never inputs."""
    import hashlib

    from thresher.schemas.documents import check_input_schema

    sizes = _remote_files_or_none(pattern)
    paths = sorted(sizes) if sizes is not None else discover(pattern)
    if exclude:
        from thresher.schemas import stats as S
        dirs = (S.KEPT_DIR, S.REJECTED_DIR, S.WORK_DIR, S.GLOBAL_DIR, S.MANIFEST_DIR)
        if is_remote(exclude):
            ex = tuple(exclude.rstrip("/") + f"/{d}/" for d in dirs)
            paths = [p for p in paths if not p.startswith(ex)]
        else:
            base = os.path.abspath(_local(exclude))
            ex = tuple(os.path.join(base, d) + "/" for d in dirs)
            paths = [p for p in paths if is_remote(p) or not os.path.abspath(p).startswith(ex)]
    if not paths:
        raise InputError(f"input {pattern!r} matched no Parquet files")
    if is_remote(pattern):
        base = _base_of(pattern) if any(ch in pattern for ch in "*?[") else pattern.rstrip("/") + "/"
    else:
        lp = _local(pattern)
        base = (lp.rstrip("/") + "/") if os.path.isdir(lp) else _base_of(os.path.abspath(lp)) \
            if any(ch in lp for ch in "*?[") else os.path.dirname(os.path.abspath(lp)) + "/"
        base = os.path.abspath(base) + "/"
    shards: list[Shard] = []
    names: set[str] = set()
    for i, path in enumerate(paths):
        rel = path[len(base):] if path.startswith(base) else os.path.basename(path)
        try:
            with open_read(path) as f:
                pf = pq.ParquetFile(f)
                schema = pf.schema_arrow
                num_rows = pf.metadata.num_rows
                footer_size = pf.metadata.serialized_size
                footer = _footer_digest(pf.metadata)
        except InputError:
            raise
        except Exception as e:  # corrupt / truncated / not Parquet
            raise InputError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from None
        check_input_schema(schema, path, text_column, id_column)
        fsize = sizes[path] if sizes is not None else size(path)
        fp = hashlib.sha256(f"{fsize}|{num_rows}|{footer_size}|{schema}|{footer}".encode()).hexdigest()[:16]
        name = _stem(rel)
        k = 1
        while name in names:
            k += 1
            name = f"{_stem(rel)}-{k}"
        names.add(name)
        shards.append(Shard(index=i, path=path, rel=rel, name=name, num_rows=num_rows, size=fsize,
                            fingerprint=fp))
    return shards


def first_schema_has(pattern: str, column: str) -> bool:
    try:
        paths = discover(pattern)
        if not paths:
            return False
        with open_read(paths[0]) as f:
            return column in pq.ParquetFile(f).schema_arrow.names
    except Exception:
        return False  # describe_shards reports the real problem


def iter_batches(path: str, batch_rows: int, columns: Optional[list[str]] = None) -> Iterator[pa.RecordBatch]:
    """Yield record batches; errors name the file and the row group at fault."""
    f = open_read(path) if is_remote(path) else None
    try:
        pf = pq.ParquetFile(f) if f is not None else pq.ParquetFile(_local(path), memory_map=True)
        for rg in range(pf.num_row_groups):
            try:
                t = pf.read_row_group(rg, columns=columns)
            except Exception as e:
                raise InputError(f"{path}: row group {rg} cannot be read ({type(e).__name__}: {e})") from None
            yield from t.to_batches(max_chunksize=batch_rows)
    finally:
        if f is not None:
            f.close()
