"""A third-party stage: counts exclamation marks and rejects shouting documents."""
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher import Column, LocalStage, Param, StageOutput


class Shout(LocalStage):
    name = "shout"
    doc = "Counts '!' per document; rejects documents with more than max_bangs."
    params = {"max_bangs": Param(int, 3, "reject above this many '!'")}
    columns = (Column("shout_bangs", pa.int64(), "number of '!'"),)
    reasons = {"too_loud": "more than max_bangs '!'"}

    def process(self, text, batch):
        bangs = pc.count_substring(text, "!").cast(pa.int64())
        loud = bangs.to_numpy(zero_copy_only=False) > self.config["max_bangs"]
        reasons = pa.array(np.where(loud, self.reason("too_loud"), None).tolist(), pa.string())
        return StageOutput(columns={"shout_bangs": bangs}, reasons=reasons)


class Explode(LocalStage):
    """Fails on any document containing BOOM (for the tests of errors during work)."""

    name = "explode"
    doc = "Raises ValueError on a document containing BOOM (test stage)."
    columns = ()

    def process(self, text, batch):
        hit = pc.match_substring(text, "BOOM").to_numpy(zero_copy_only=False)
        if hit.any():
            raise ValueError(f"BOOM in row {int(np.flatnonzero(hit)[0])} of the batch")
        return StageOutput(columns={})
