"""DuckDB summary of an output directory (``thresher inspect DIR``)."""
from __future__ import annotations

import json
import os
from typing import Any

from thresher.schemas import columns as C
from thresher.schemas import stats as S


def connect(out_dir: str):
    """A DuckDB connection with views ``kept``, ``rejected`` and ``docs`` (both, with a status)."""
    import duckdb

    con = duckdb.connect()
    kept = os.path.join(out_dir, S.KEPT_DIR, "*.parquet")
    rej = os.path.join(out_dir, S.REJECTED_DIR, "*.parquet")
    con.execute(f"CREATE VIEW kept AS SELECT * FROM read_parquet('{kept}', union_by_name=true, filename=true)")
    con.execute(f"CREATE VIEW rejected AS SELECT * FROM read_parquet('{rej}', union_by_name=true, filename=true)")
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


def summary(out_dir: str, examples: int = 3, max_chars: int = 160) -> dict[str, Any]:
    if not os.path.isdir(os.path.join(out_dir, S.KEPT_DIR)):
        raise FileNotFoundError(f"{out_dir} is not a thresher output directory (no {S.KEPT_DIR}/)")
    con = connect(out_dir)
    stats = {}
    sp = os.path.join(out_dir, S.STATS_FILE)
    if os.path.exists(sp):
        with open(sp) as f:
            stats = json.load(f)
    text_col = (stats.get("config", {}).get("input", {}) or {}).get("text_column", "text")
    kept = con.execute("SELECT count(*) FROM kept").fetchone()[0]
    rejected = con.execute("SELECT count(*) FROM rejected").fetchone()[0]
    by_reason = con.execute(
        f"SELECT split_part(reason, '.', 1) AS stage, reason, count(*) AS docs, "
        f"sum(length({text_col})) AS chars FROM rejected GROUP BY ALL ORDER BY docs DESC").fetchall()
    scores = {}
    for col in numeric_score_columns(con, text_col, stats.get("config")):
        r = con.execute(
            f"SELECT count({col}), min({col}), quantile_cont({col}, 0.1), median({col}), "
            f"quantile_cont({col}, 0.9), max({col}) FROM docs").fetchone()
        if r[0]:
            scores[col] = dict(zip(["n", "min", "p10", "p50", "p90", "max"],
                                   [float(x) if x is not None else None for x in r]))
    ex = {}
    for _, reason, *_ in by_reason[:12]:
        rows = con.execute(
            f"SELECT {json.dumps(_id_col(stats))}, left(replace({text_col}, chr(10), ' '), {max_chars}) "
            f"FROM rejected WHERE reason = ? ORDER BY {json.dumps(_id_col(stats))} LIMIT {examples}",
            [reason]).fetchall()
        ex[reason] = [{"id": r[0], "text": r[1]} for r in rows]
    return {"kept": kept, "rejected": rejected, "total": kept + rejected,
            "input_rows": stats.get("input_rows"), "reconciled": stats.get("reconciled"),
            "by_reason": [dict(zip(["stage", "reason", "docs", "chars"], r)) for r in by_reason],
            "scores": scores, "examples": ex}


def _id_col(stats: dict) -> str:
    return (stats.get("config", {}).get("input", {}) or {}).get("id_column") or C.ID


def render(s: dict[str, Any]) -> str:
    lines = [f"documents: {s['total']:,} (kept {s['kept']:,}, rejected {s['rejected']:,})"
             + (f" · input {s['input_rows']:,} · reconciled={s['reconciled']}" if s.get("input_rows") is not None
                else "")]
    lines.append("")
    lines.append(f"{'reason':<42} {'docs':>9} {'chars':>13}")
    for r in s["by_reason"]:
        lines.append(f"{r['reason']:<42} {r['docs']:>9,} {int(r['chars'] or 0):>13,}")
    if s["scores"]:
        lines.append("")
        lines.append(f"{'score':<38} {'n':>8} {'min':>9} {'p10':>9} {'p50':>9} {'p90':>9} {'max':>9}")
        for col, d in s["scores"].items():
            def f(x):
                return f"{x:9.3g}" if x is not None else f"{'-':>9}"
            lines.append(f"{col:<38} {int(d['n']):>8} {f(d['min'])} {f(d['p10'])} {f(d['p50'])} "
                         f"{f(d['p90'])} {f(d['max'])}")
    if s["examples"]:
        lines.append("")
        lines.append("examples of rejected documents:")
        for reason, rows in s["examples"].items():
            lines.append(f"  {reason}")
            for r in rows:
                lines.append(f"    [{r['id']}] {r['text']}")
    return "\n".join(lines)
