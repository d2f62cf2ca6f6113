"""Columns written by the PreSelect stage."""
import pyarrow as pa
from thresher.schemas.columns import register_fields

PRESELECT_SCORE = "preselect_score"   # P(__label__1) from the PreSelect fastText classifier
register_fields("preselect", [pa.field(PRESELECT_SCORE, pa.float32())])
