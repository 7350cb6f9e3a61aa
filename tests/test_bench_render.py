"""``benchmarks.run --render`` rewrites BENCHMARKS.md without losing what it cannot re-render here."""

from __future__ import annotations

from benchmarks import run


def test_render_keeps_sections_without_stored_results_and_hand_written_ones(tmp_path, monkeypatch):
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "targets.md").write_text("## Targets: met, missed, and what limits them\n\nnew targets\n")
    scale = dict((name, title) for name, title in run.SECTIONS)["scale"]
    (tmp_path / "BENCHMARKS.md").write_text(
        "# Benchmarks\n\nold header\n\n"
        f"## {scale}\n\nmeasured on another machine\n\n"
        "## A hand-written matrix\n\nquick-run numbers\n\n"
        "## Targets: met, missed, and what limits them\n\nold targets\n"
    )
    monkeypatch.setattr(run, "ROOT", tmp_path)
    monkeypatch.setattr(run, "RESULTS", tmp_path / "benchmarks" / "results")  # nothing stored

    page = run.render(quick=False)

    assert "old header" not in page
    assert "measured on another machine" in page and "quick-run numbers" in page
    assert page.index(scale) < page.index("A hand-written matrix") < page.index("new targets")
    assert "old targets" not in page and page.count("## Targets") == 1
