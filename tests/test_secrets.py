"""No literal credential in the repository (issue 10, part 7): detect-secrets scans every tracked text file and
finds nothing beyond ``.secrets.baseline``, whose entries are audited false positives (``is_secret: false``:
URL templates with user and password placeholders, a setting's name, generated test tokens).

Refresh the baseline after auditing a new false positive::

    detect-secrets scan --baseline .secrets.baseline $(git ls-files)
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from detect_secrets.core import baseline
from detect_secrets.core.secrets_collection import SecretsCollection

REPO = Path(__file__).resolve().parent.parent
BASELINE = REPO / ".secrets.baseline"
BINARY = (".gz", ".parquet", ".png", ".jpg", ".pbix", ".zip", ".jar", ".ico")


def _scan(files: list[str]):
    """detect-secrets' scan of ``files`` (relative to the working directory) with the baseline's plugins and
    filters; returns the baseline's SecretsCollection and the scan's."""
    data = json.loads(BASELINE.read_text())
    known = baseline.load(data, filename=str(BASELINE))  # also configures plugins and filters from the baseline
    found = SecretsCollection()  # paths relative to the working directory (= root), as in the baseline
    # file by file in this process: scan_files always forks a multiprocessing pool, and a fork of a pytest process
    # that runs other tests' threads (Kafka clients, Py4J) can deadlock in the child (seen in a full run)
    for f in files:
        found.scan_file(f)
    return known, found


def _new(known, found) -> list[str]:
    return [f"{name}:{s.line_number} {s.type}" for name, s in (found - known)]


def test_no_credentials_in_tracked_files(monkeypatch):
    monkeypatch.chdir(REPO)
    files = [f for f in subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                                       check=True).stdout.split("\n")
             if f and not f.endswith(BINARY) and f != BASELINE.name and (REPO / f).is_file()]  # the baseline's own
    # hashes are not credentials (detect-secrets' CLI skips the baseline file the same way)
    assert len(files) > 100
    known, found = _scan(files)
    new = _new(known, found)
    assert not new, f"possible credentials (remove them, or audit and add to .secrets.baseline): {new}"
    data = json.loads(BASELINE.read_text())
    assert all(not r.get("is_secret", True) for rs in data["results"].values() for r in rs), \
        "every baseline entry must be audited as a false positive"


def test_the_scanner_finds_a_planted_credential(tmp_path, monkeypatch):
    """The same scan flags a credential in a new file (so the test above can fail)."""
    monkeypatch.chdir(tmp_path)
    key = "AKIA" + "Z7Q4" + "MXW2" + "RT6P" + "LN3K"  # shape of an AWS access key id, assembled at run time
    (tmp_path / "settings_local.py").write_text(f'AWS_ACCESS_KEY_ID = "{key}"\n')
    known, found = _scan(["settings_local.py"])
    assert any("AWS" in x for x in _new(known, found))
