"""`gateway demo` (what `make demo` runs) completes its story and exits 0."""

from gateway.demo import main


async def test_demo_story_passes(capsys):
    assert await main() == 0
    out = capsys.readouterr().out
    assert "All steps passed" in out and "【王女士 #1】" in out
