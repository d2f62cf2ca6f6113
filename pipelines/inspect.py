"""DuckDB summary of an output directory (``thresher inspect DIR``).

Only the files the run's manifests list (``_manifests/<shard>.json``, ``"files"``) are read,
never a glob of ``kept/*.parquet``: a stray Parquet file in ``kept/`` or ``rejected/`` (copied
there by hand, left by another tool, an interrupted write) is reported, not counted.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

from thresher.schemas import columns as C
from thresher.schemas import stats as S

TOP_GROUPS = 20          # ``by=``: this many values by count, the rest as "(other)"
OTHER = "(other)"
EXAMPLE_REASONS = 12     # examples for the most frequent reasons only
_QUANTILES = ("n", "min", "p10", "p50", "p90", "max")


def _lit(s: str) -> str:
    """A SQL string literal."""
    return "'" + str(s).replace("'", "''") + "'"


def _ident(name: str) -> str:
    """A SQL identifier."""
    return '"' + str(name).replace('"', '""') + '"'


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def _stats(out_dir: str) -> dict:
    sp = os.path.join(out_dir, S.STATS_FILE)
    return _read_json(sp) if os.path.exists(sp) else {}


def manifest_files(out_dir: str) -> dict[str, list[str]]:
    """``{"kept": [...], "rejected": [...]}``: the output files (relative to ``out_dir``,
    sorted) that the run's shard manifests list. Manifests of another run (a fingerprint that
    is not the one in ``_run.json``) are ignored. A listed file that is missing is a
    ``FileNotFoundError``."""
    files: dict[str, list[str]] = {S.KEPT_DIR: [], S.REJECTED_DIR: []}
    mdir = os.path.join(out_dir, S.MANIFEST_DIR)
    if not os.path.isdir(mdir):
        return files
    run_file = os.path.join(out_dir, S.RUN_FILE)
    run_fp = str(_read_json(run_file).get("fingerprint") or "") if os.path.exists(run_file) else ""
    for name in sorted(os.listdir(mdir)):
        if not name.endswith(".json") or name.startswith("."):
            continue
        path = os.path.join(mdir, name)
        m = _read_json(path)
        if run_fp and not str(m.get("fingerprint", "")).startswith(run_fp + ":"):
            continue
        for kind in (S.KEPT_DIR, S.REJECTED_DIR):
            rel = (m.get("files") or {}).get(kind)
            if not rel:
                continue
            rel = os.path.normpath(rel).replace(os.sep, "/")
            if not os.path.exists(os.path.join(out_dir, rel)):
                raise FileNotFoundError(f"{out_dir}: manifest {S.MANIFEST_DIR}/{name} lists {rel}, "
                                        f"which does not exist")
            files[kind].append(rel)
    return {k: sorted(v) for k, v in files.items()}


def stray_files(out_dir: str, listed: Optional[dict[str, list[str]]] = None) -> list[str]:
    """Parquet files under ``kept/`` or ``rejected/`` (at any depth, relative to ``out_dir``,
    sorted) that no manifest of the run lists: never counted by :func:`connect`."""
    listed = manifest_files(out_dir) if listed is None else listed
    mine = {f for v in listed.values() for f in v}
    out = []
    for kind in (S.KEPT_DIR, S.REJECTED_DIR):
        base = os.path.join(out_dir, kind)
        for root, dirs, names in os.walk(base):
            dirs.sort()
            for n in sorted(names):
                if n.endswith(".parquet"):
                    rel = os.path.relpath(os.path.join(root, n), out_dir).replace(os.sep, "/")
                    if rel not in mine:
                        out.append(rel)
    return sorted(out)


def _view(con, name: str, out_dir: str, files: list[str], empty_cols: list[str]) -> None:
    if files:
        paths = ", ".join(_lit(os.path.join(out_dir, f)) for f in files)
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet([{paths}], union_by_name=true, "
                    f"filename=true)")
    else:  # no shard finished yet: an empty view with the columns every output has
        cols = ", ".join(f"NULL::VARCHAR AS {_ident(c)}" for c in empty_cols + ["filename"])
        con.execute(f"CREATE VIEW {name} AS SELECT {cols} LIMIT 0")


def connect(out_dir: str, files: Optional[dict[str, list[str]]] = None):
    """A DuckDB connection with views ``kept``, ``rejected`` and ``docs`` (both, with a
    ``status``) over exactly the files the run's manifests list (see :func:`manifest_files`)."""
    import duckdb

    if not os.path.isdir(os.path.join(out_dir, S.KEPT_DIR)) and not os.path.isdir(
            os.path.join(out_dir, S.MANIFEST_DIR)):
        raise FileNotFoundError(f"{out_dir} is not a thresher output directory (no {S.KEPT_DIR}/)")
    files = manifest_files(out_dir) if files is None else files
    inp = (_stats(out_dir).get("config", {}).get("input", {}) or {})
    base = [inp.get("id_column") or C.ID, inp.get("text_column") or "text"]
    con = duckdb.connect()
    _view(con, "kept", out_dir, files[S.KEPT_DIR], base)
    _view(con, "rejected", out_dir, files[S.REJECTED_DIR], base + [C.REASON, C.DUPLICATE_OF])
    con.execute("CREATE VIEW docs AS SELECT *, 'kept' AS status FROM kept "
                "UNION ALL BY NAME SELECT *, 'rejected' AS status FROM rejected")
    return con


def stage_columns(config: dict) -> set[str]:
    """Names of the columns the stages of a run's config write."""
    from thresher.pipelines.registry import build_stages
    from thresher.schemas.config import parse_config
    try:
        return {f.name for st in build_stages(parse_config(config).stages) for f in st.fields()}
    except Exception:  # an old or hand-edited stats.json: fall back to every declared column
        from thresher.scorers import registry
        return {c.name for cls in registry.all_classes() for c in cls.columns}


def numeric_score_columns(con, text_column: str = "text", config: dict | None = None) -> list[str]:
    rows = con.execute("DESCRIBE docs").fetchall()
    if config is not None:
        known = stage_columns(config)
    else:
        from thresher.scorers import registry
        known = {c.name for cls in registry.all_classes() for c in cls.columns}
    num = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "FLOAT", "DOUBLE", "HUGEINT", "UTINYINT",
           "USMALLINT", "UINTEGER", "UBIGINT")
    return [r[0] for r in rows if r[0] in known and str(r[1]).upper().startswith(num)]


_ALIASES = {"words": "word_count"}   # gopher_quality min_words/max_words -> ..._word_count


def threshold_lines(config: dict) -> dict[str, list[tuple[str, float]]]:
    """``{column: [(label, value), ...]}``: the thresholds of a run's config (defaults
    included) on the columns they apply to, for plots: ``min_X``/``max_X`` on the stage's
    column ending in ``X`` (``length.min_chars`` on ``length_chars``, ``gopher_quality.min_words``
    on ``gopher_quality_word_count``), ``threshold`` / ``min_score`` / ``max_score`` on its
    ``*_score`` column (``language.threshold`` on ``language_score``). Disabled ones (null,
    a minimum or threshold of 0) are left out; an unreadable config gives ``{}``."""
    from thresher.pipelines.registry import build_stages
    from thresher.schemas.config import parse_config
    try:
        stages = build_stages(parse_config(config).stages)
    except Exception:
        return {}
    out: dict[str, list[tuple[str, float]]] = {}
    for st in stages:
        bases = [c.name for c in st.active_columns()]
        for p, v in st.config.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if p in ("threshold", "min_score", "max_score"):
                suffix = "score"
            elif p.startswith(("min_", "max_")):
                suffix = _ALIASES.get(p[4:], p[4:])
            else:
                continue
            if v == 0 and not p.startswith("max_"):
                continue
            hit = [b for b in bases if b == suffix or b.endswith("_" + suffix)]
            if len(hit) == 1:
                out.setdefault(st.column_name(hit[0]), []).append((f"{st.id}.{p}={v:g}", float(v)))
    return out


def _quantiles(con, cols: list[str], table: str, group: Optional[str] = None) -> dict:
    """``{group or None: {col: {n, min, p10, p50, p90, max}}}`` over non-null values."""
    res: dict = {}
    g = f"{group}, " if group else ""
    for col in cols:
        c = _ident(col)
        rows = con.execute(
            f"SELECT {g}count({c}), min({c}), quantile_cont({c}, 0.1), median({c}), "
            f"quantile_cont({c}, 0.9), max({c}) FROM {table}" + (f" GROUP BY {group}" if group else "")).fetchall()
        for r in rows:
            key, vals = (r[0], r[1:]) if group else (None, r)
            if vals[0]:
                res.setdefault(key, {})[col] = dict(zip(_QUANTILES, [float(x) if x is not None else None
                                                                      for x in vals]))
    return res


def _by_groups(con, by: str, score_cols: list[str], top: int = TOP_GROUPS) -> dict[str, Any]:
    cols = [r[0] for r in con.execute("DESCRIBE docs").fetchall()]
    if by not in cols:
        raise ValueError(f"by={by!r}: no such column in the output; columns: {', '.join(cols)}")
    q = _ident(by)
    keep = ", ".join(_ident(c) for c in score_cols)
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _by_values AS
        SELECT {q} AS v, count(*) AS n,
               row_number() OVER (ORDER BY count(*) DESC, CAST({q} AS VARCHAR) NULLS LAST) AS rk
        FROM docs GROUP BY {q}""")
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _by AS
        SELECT least(b.rk, {top + 1}) AS _g, d.status, d.{_ident(C.REASON)} AS reason{', ' + keep if keep else ''}
        FROM docs d JOIN _by_values b ON d.{q} IS NOT DISTINCT FROM b.v""")
    values = dict(con.execute(f"SELECT rk, v FROM _by_values WHERE rk <= {top}").fetchall())
    n_values, n_other = con.execute(
        f"SELECT count(*), count(*) FILTER (WHERE rk > {top}) FROM _by_values").fetchone()
    groups: dict[int, dict[str, Any]] = {}
    for g, docs, kept, rej in con.execute(
            "SELECT _g, count(*), count(*) FILTER (WHERE status = 'kept'), "
            "count(*) FILTER (WHERE status = 'rejected') FROM _by GROUP BY _g ORDER BY _g").fetchall():
        d: dict[str, Any] = {"value": values.get(g, OTHER), "docs": docs, "kept": kept, "rejected": rej,
                             "reasons": {}, "scores": {}}
        if g > top:
            d["other"] = True
            d["values"] = n_other
        groups[g] = d
    for g, reason, n in con.execute(
            "SELECT _g, reason, count(*) AS n FROM _by WHERE status = 'rejected' "
            "GROUP BY ALL ORDER BY _g, n DESC, reason").fetchall():
        groups[g]["reasons"][reason] = n
    for g, sc in _quantiles(con, score_cols, "_by", "_g").items():
        groups[g]["scores"] = sc
    con.execute("DROP TABLE _by; DROP TABLE _by_values")
    return {"column": by, "values": n_values, "top": top, "groups": [groups[g] for g in sorted(groups)]}


def _examples(con, reasons: list[str], id_col: str, text_col: str, examples: int, max_chars: int,
              seed: int) -> dict[str, list[dict]]:
    """A seeded random sample of ``examples`` rejected documents per reason: rows ordered by
    ``md5("<seed>:<id>")`` (stable across DuckDB versions and file layouts), so the same seed
    gives the same examples and another seed other ones."""
    ex: dict[str, list[dict]] = {r: [] for r in reasons}
    if not reasons or examples <= 0:
        return ex
    i, t = _ident(id_col), _ident(text_col)
    rows = con.execute(f"""
        SELECT reason, id, text FROM (
            SELECT reason, {i} AS id, left(replace({t}, chr(10), ' '), {int(max_chars)}) AS text,
                   row_number() OVER (PARTITION BY reason
                       ORDER BY md5(? || ':' || CAST({i} AS VARCHAR)), CAST({i} AS VARCHAR), filename, {t}) AS k
            FROM rejected WHERE reason IN ({', '.join('?' for _ in reasons)}))
        WHERE k <= {int(examples)} ORDER BY reason, k""", [str(int(seed))] + list(reasons)).fetchall()
    for reason, id_, text in rows:
        ex[reason].append({"id": id_, "text": text})
    return {r: ex[r] for r in reasons}


def summary(out_dir: str, examples: int = 3, max_chars: int = 160, by: Optional[str] = None,
            seed: int = 0) -> dict[str, Any]:
    """Counts, rejections by reason, score quantiles and a seeded sample of rejected documents
    per reason; with ``by`` the same counts and quantiles per value of that output column (the
    ``TOP_GROUPS`` most frequent values, the rest as ``"(other)"``; an unknown column is a
    ``ValueError`` listing the columns). Stray files (see :func:`stray_files`) are listed, not
    counted."""
    if not os.path.isdir(os.path.join(out_dir, S.KEPT_DIR)):
        raise FileNotFoundError(f"{out_dir} is not a thresher output directory (no {S.KEPT_DIR}/)")
    files = manifest_files(out_dir)
    con = connect(out_dir, files)
    stats = _stats(out_dir)
    text_col = (stats.get("config", {}).get("input", {}) or {}).get("text_column", "text")
    id_col = _id_col(stats)
    kept = con.execute("SELECT count(*) FROM kept").fetchone()[0]
    rejected = con.execute("SELECT count(*) FROM rejected").fetchone()[0]
    by_reason = con.execute(
        f"SELECT split_part(reason, '.', 1) AS stage, reason, count(*) AS docs, "
        f"sum(length({_ident(text_col)})) AS chars FROM rejected GROUP BY ALL ORDER BY docs DESC, reason").fetchall()
    score_cols = numeric_score_columns(con, text_col, stats.get("config"))
    scores = _quantiles(con, score_cols, "docs").get(None, {})
    grouped = _by_groups(con, by, score_cols) if by is not None else None
    ex = _examples(con, [r[1] for r in by_reason[:EXAMPLE_REASONS]], id_col, text_col, examples,
                   max_chars, seed)
    return {"kept": kept, "rejected": rejected, "total": kept + rejected,
            "input_rows": stats.get("input_rows"), "reconciled": stats.get("reconciled"),
            "by_reason": [dict(zip(["stage", "reason", "docs", "chars"], r)) for r in by_reason],
            "scores": scores, "examples": ex, "seed": seed,
            "files": {k: len(v) for k, v in files.items()},
            "stray_files": stray_files(out_dir, files), "by": grouped}


def _id_col(stats: dict) -> str:
    return (stats.get("config", {}).get("input", {}) or {}).get("id_column") or C.ID


def _g(x) -> str:
    return f"{x:9.3g}" if x is not None else f"{'-':>9}"


def _label(v: Any, width: int) -> str:
    s = "(null)" if v is None else str(v).replace("\n", " ")
    return s if len(s) <= width else s[:width - 1] + "…"


def render(s: dict[str, Any]) -> str:
    lines = [f"documents: {s['total']:,} (kept {s['kept']:,}, rejected {s['rejected']:,})"
             + (f" · input {s['input_rows']:,} · reconciled={s['reconciled']}" if s.get("input_rows") is not None
                else "")]
    stray = s.get("stray_files") or []
    if stray:
        shown = ", ".join(stray[:5]) + (f" and {len(stray) - 5} more" if len(stray) > 5 else "")
        lines.append(f"stray files (in no manifest, not counted): {len(stray)}: {shown}")
    lines.append("")
    lines.append(f"{'reason':<42} {'docs':>9} {'chars':>13}")
    for r in s["by_reason"]:
        lines.append(f"{r['reason']:<42} {r['docs']:>9,} {int(r['chars'] or 0):>13,}")
    if s["scores"]:
        lines.append("")
        lines.append(f"{'score':<38} {'n':>8} {'min':>9} {'p10':>9} {'p50':>9} {'p90':>9} {'max':>9}")
        for col, d in s["scores"].items():
            lines.append(f"{col:<38} {int(d['n']):>8} {_g(d['min'])} {_g(d['p10'])} {_g(d['p50'])} "
                         f"{_g(d['p90'])} {_g(d['max'])}")
    by = s.get("by")
    if by:
        lines += ["", f"by {by['column']} ({min(by['values'], by['top'])} of {by['values']:,} values"
                      + (", the rest as (other))" if by["values"] > by["top"] else ")")]
        lines.append(f"{by['column'][:30]:<30} {'docs':>9} {'kept':>9} {'rejected':>9} {'kept %':>7}")
        for g in by["groups"]:
            name = f"{OTHER} ({g['values']:,} values)" if g.get("other") else _label(g["value"], 30)
            pct = 100.0 * g["kept"] / g["docs"] if g["docs"] else 0.0
            lines.append(f"{name:<30} {g['docs']:>9,} {g['kept']:>9,} {g['rejected']:>9,} {pct:>6.1f}%")
            for reason, n in g["reasons"].items():
                lines.append(f"  {reason:<28} {'':>9} {'':>9} {n:>9,}")
        cols = list(s["scores"]) or sorted({c for g in by["groups"] for c in g["scores"]})
        for col in cols:
            lines.append("")
            lines.append(f"{col[:30]:<30} {'n':>8} {'min':>9} {'p10':>9} {'p50':>9} {'p90':>9} {'max':>9}")
            for g in by["groups"]:
                d = g["scores"].get(col)
                if d:
                    name = OTHER if g.get("other") else _label(g["value"], 28)
                    lines.append(f"  {name:<28} {int(d['n']):>8} {_g(d['min'])} {_g(d['p10'])} {_g(d['p50'])} "
                                 f"{_g(d['p90'])} {_g(d['max'])}")
    if s["examples"]:
        lines.append("")
        seed = s.get("seed")
        lines.append("examples of rejected documents" + (f" (random sample, seed {seed}):" if seed is not None
                                                         else ":"))
        for reason, rows in s["examples"].items():
            lines.append(f"  {reason}")
            for r in rows:
                lines.append(f"    [{r['id']}] {r['text']}")
    return "\n".join(lines)
