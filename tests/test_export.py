"""Export: figures as standalone HTML; results and traces as JSON/CSV that pandas reads."""

import io
import json

import pytest

import apflab
from apflab import plots

pd = pytest.importorskip("pandas", reason="pandas is in the [test] extra")


@pytest.fixture(scope="module")
def results():
    return apflab.compare("memtouch", seed=0, calc_thread=True, npages=32, limit_pages=8)


def test_trace_csv_reads_into_pandas(results, tmp_path):
    off, on = results
    path = tmp_path / "trace.csv"
    on.trace.save_csv(path)
    df = pd.read_csv(path)
    assert list(df.columns) == ["t_ns", "kind", "fields"]
    assert len(df) == len(on.trace.records)
    assert (df["kind"] == "apf_not_present").sum() == on.apf_not_present
    tokens = df[df.kind == "apf_not_present"]["fields"].map(lambda f: json.loads(f)["token"])
    assert list(tokens) == [r.get("token") for r in on.trace.select("apf_not_present")]
    spans = pd.read_csv(io.StringIO(on.trace.spans_csv()))
    assert int((spans.t_end - spans.t_start).sum()) == on.trace.elapsed_ns


def test_results_as_rows_json_and_csv(results, tmp_path):
    rows = [r.row() for r in results]
    df = pd.DataFrame(rows)
    assert list(df["apf"]) == [False, True] and list(df["faults"]) == [r.faults for r in results]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(rows))
    back = pd.read_json(path)
    assert list(back["stall_ns"]) == [r.stall_ns for r in results]
    df.to_csv(tmp_path / "results.csv", index=False)
    assert list(pd.read_csv(tmp_path / "results.csv")["work_compute"]) == [r.work["compute"] for r in results]


def test_trace_json_round_trip(results, tmp_path):
    on = results[1]
    path = tmp_path / "trace.json"
    on.trace.save_json(path)
    assert apflab.Trace.load_json(path).digest() == on.trace.digest()


def test_figure_saves_as_standalone_html(results, tmp_path):
    fig = plots.breakdown_bar({"APF off": results[0], "APF on": results[1]})
    path = plots.save_html(fig, tmp_path / "fig.html")
    html = path.read_text()
    assert "<html>" in html[:200] and "Plotly.newPlot" in html
    assert '<script src="http' not in html           # opens offline: plotly.js is inlined
    assert len(html) > 1_000_000                     # ... all of it
