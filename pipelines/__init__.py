"""Beam transforms, pipeline construction from a config, and the ``thresher`` CLI."""

import logging as _logging


class _NoApitoolsNotice(_logging.Filter):
    """Beam logs "apitools not found ..." on the root logger at import when the GCP client
    libraries are absent; it is noise for every local user, so only that record is dropped."""

    def filter(self, record: _logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith("apitools not found")


_logging.getLogger().addFilter(_NoApitoolsNotice())
