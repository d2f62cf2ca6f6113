"""``python -m thresher`` = the ``thresher`` command."""
from thresher.pipelines.cli import entry

entry()
