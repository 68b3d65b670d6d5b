"""The command line and sweeps."""

import csv
import io
import json

import pytest

from apflab import cli
from apflab.errors import ParameterError
from apflab.sweep import points, sweep

SMALL = ["--param", "npages=32", "--param", "limit_pages=8"]


def test_run_json_echoes_parameters(capsys):
    assert cli.main(["run", "memtouch", "--apf", "on", "--json", *SMALL]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["apf"] is True and row["param.npages"] == 32 and row["param.limit_pages"] == 8
    assert row["apf_not_present"] == row["faults"] > 0


def test_compare_prints_side_by_side(capsys):
    assert cli.main(["compare", "memtouch", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "APF on" in out and "stalled" in out and "elapsed on/off" in out


def test_csv_is_readable(capsys):
    assert cli.main(["compare", "memtouch", "--csv", *SMALL]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["apf"] for r in rows] == ["False", "True"]


def test_bad_parameter_is_a_clear_error(capsys):
    assert cli.main(["run", "memtouch", "--apf", "on", "--param", "limit_pages=0"]) == 2
    assert "limit_pages" in capsys.readouterr().err


def test_help_everywhere(capsys):
    for sub in ([], ["run"], ["compare"], ["sweep"], ["check"], ["lab"], ["params"]):
        with pytest.raises(SystemExit) as e:
            cli.main([*sub, "--help"])
        assert e.value.code == 0
        assert "usage" in capsys.readouterr().out


def test_check_reports_ready(capsys):
    assert cli.main(["check"]) == 0
    assert "apflab is ready." in capsys.readouterr().out


def test_sweep_rows_do_not_depend_on_workers():
    grid = {"latency_ns": [20_000, 60_000]}
    one = sweep("memtouch", grid, workers=1, progress=False, npages=16, limit_pages=8)
    two = sweep("memtouch", grid, workers=2, progress=False, npages=16, limit_pages=8)
    assert one == two and len(one) == 4
    assert [(r["param.latency_ns"], r["apf"]) for r in one] == [(20_000, False), (20_000, True),
                                                               (60_000, False), (60_000, True)]


def test_sweep_rejects_unknown_parameters():
    with pytest.raises(ParameterError, match="nope"):
        points("memtouch", {"nope": [1]})
    with pytest.raises(ParameterError):
        points("memtouch", {"npages": []})


def test_sweep_on_a_dask_cluster_gives_the_same_rows():
    distributed = pytest.importorskip("dask.distributed", reason="the dask extra is not installed")
    grid = {"latency_ns": [20_000, 60_000]}
    local = sweep("memtouch", grid, workers=1, progress=False, npages=16, limit_pages=8)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        remote = sweep("memtouch", grid, client=client, progress=False, npages=16, limit_pages=8)
    assert remote == local


def test_designs_prints_the_five_designs_side_by_side(capsys):
    assert cli.main(["designs", "syscall_read", *SMALL]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[2].split()
    assert header == ["sync", "sdei", "irq", "abort", "halt"]
    assert "kernel_mode=16" in out and "irq_masked=16" in out and "guest lines needed" in out


def test_designs_json_and_csv(capsys):
    assert cli.main(["designs", "memtouch", "--json", *SMALL]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["design"] for r in rows] == ["sync", "sdei", "irq", "abort", "halt"]
    assert rows[1]["async_fraction"] == 1.0 and rows[0]["fallbacks"] == {"apf_disabled": 64}          # 32 pages, 2 rounds
    assert cli.main(["designs", "memtouch", "--csv", *SMALL]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert rows[0]["fallbacks"] == "apf_disabled=64" and rows[4]["guest_lines"] == "0"


def test_run_with_a_delivery_design(capsys):
    assert cli.main(["run", "memtouch", "--apf", "on", "--delivery", "abort", "--json", *SMALL]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["delivery"] == "abort" and row["apf_not_present"] == row["faults"]
