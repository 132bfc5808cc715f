"""Read without running: ``scan``, ``dis`` and ``show``.

``scan(path | bytes | file, policy=...)`` tells what a file of pickles would do if loaded,
as a ``ScanReport`` with a verdict (``safe``, ``needs-allow``, ``malformed``,
``dangerous``) and findings; ``dis`` lists the opcodes; ``show`` writes out what the pickles
build.  All three read every container the scanner knows (torch checkpoints, joblib, numpy,
compressed files, zip and tar archives) and never import or call anything from the data.
"""

from .dis import dis
from .scan import (Finding, PickleInfo, ScanReport, Verdict, allow_entries, policy_from_pickle,
                   scan, scan_paths)
from .show import show

__all__ = ["Finding", "PickleInfo", "ScanReport", "Verdict", "allow_entries", "dis",
           "policy_from_pickle", "scan", "scan_paths", "show"]
