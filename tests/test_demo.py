"""`gateway demo` (what `make demo` runs) completes its story and exits 0."""

from gateway.demo import main


async def test_demo_story_passes(capsys):
    assert await main() == 0
    out = capsys.readouterr().out
    assert "All steps passed" in out and "【王女士 #1】" in out
    assert "小林 left; customers handed to 芳芳 (2 moved)" in out and "芳芳 sees 【王女士 #1】好的芳芳" in out
    assert "report 「会员专享券」: audience 2, sent 1, excluded {'opted_out': 1}" in out
    report = out[out.index("Attribution report"):]
    lin = next(ln for ln in report.splitlines() if "小林" in ln).split()
    fang = next(ln for ln in report.splitlines() if "芳芳" in ln).split()
    assert lin[-3:] == ["1", "399.00", "21.97"] and fang[-3:] == ["1", "1000.00", "50.00"]


async def test_demo_story_with_the_clerk_on_dingtalk(capsys):
    assert await main("dingtalk") == 0
    out = capsys.readouterr().out
    assert "clerk on DingTalk" in out and "dingtalk user clerk001" in out and "All steps passed" in out


async def test_demo_story_with_the_clerk_on_wecom(capsys):
    assert await main("wecom") == 0
    out = capsys.readouterr().out
    assert "clerk on WeCom" in out and "WeChat user 陈先生 added the clerk by QR" in out and "All steps passed" in out
    assert "2 moved, 1 transfer requested" in out and "binding moved to 芳芳" in out
