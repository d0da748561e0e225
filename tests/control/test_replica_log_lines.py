from pathlib import Path

from tramontane.control.backends.base import open_log


def test_a_restarted_process_starts_its_own_line(tmp_path: Path) -> None:
    log_path = tmp_path / "replica.log"
    for chunk in (b"first start\n", b"killed mid-li", b"second start\n"):
        with open_log(log_path) as log:
            log.write(chunk)
    assert log_path.read_bytes().splitlines() == [b"first start", b"killed mid-li", b"second start"]
