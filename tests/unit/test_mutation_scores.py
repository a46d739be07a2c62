"""The mutation score report (tests/support/mutation.py) reads mutmut's results: a timeout
is a kill, a mutant no test reaches is a survivor, one not yet run is not counted."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.mutation import outcomes, table


def test_scores_count_timeouts_as_kills_and_untested_mutants_as_survivors(tmp_path: Path):
    meta = tmp_path / "sshreg" / "keys" / "options.py.meta"
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps({"exit_code_by_key": {
        "a": 1, "b": 1, "c": 36, "d": 0, "e": 33, "f": None}}))

    found = outcomes(tmp_path)

    assert found == {"sshreg/keys/options.py": {"a": "killed", "b": "killed", "c": "timeout",
                                                "d": "survived", "e": "no tests"}}
    assert "| `sshreg/keys/options.py` | 5 | 2 | 1 | 1 | 1 | 60.0 % |" in table(found)
