"""Peak memory of relaying one big Slack file to X, against a target.

    python bench/upload_memory.py                 # 200 MB video, the streaming path the worker uses
    python bench/upload_memory.py --mode whole    # the same file read whole first, for contrast

A child process serves the file (streamed, with a Content-Length, as Slack's CDN does) and
runs fake X; this process runs only the bridge's side: ``SlackApi.open_file`` piped into
``XApiClient.upload_media`` (initialize / append / finalize). The figure is the growth of
this process's peak RSS over a warmed-up baseline (``ru_maxrss``), which is what a 512 MB
dyno sees. Exit status 1 when the figure is over the target.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapters.sandbox.fake_x import FakeX, run_fake_x  # noqa: E402
from adapters.slack.api import SlackApi, web_client  # noqa: E402
from adapters.x.api import XApiClient  # noqa: E402
from bridge.media import BytesSource  # noqa: E402

MB = 1024 * 1024
ME = "1000"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


async def serve(size: int) -> None:
    """The child: a file server streaming ``size`` bytes, and fake X; prints where they are."""

    async def download(request: web.Request) -> web.StreamResponse:
        length = int(request.match_info["size"])
        response = web.StreamResponse(headers={"Content-Type": "video/mp4", "Content-Length": str(length)})
        await response.prepare(request)
        block = bytes(range(256)) * 1024
        sent = 0
        while sent < length:
            piece = block[: min(len(block), length - sent)]
            await response.write(piece)
            sent += len(piece)
        await response.write_eof()
        return response

    files = web.Application()
    files.router.add_get("/files-pri/T1-F1/download/{size}/big.mp4", download)
    runner = web.AppRunner(files, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    fake = FakeX()
    fake.media_check_after_secs = 0
    async with run_fake_x(fake) as (x, x_url):
        x.add_user(ME, "bench")
        token = x.issue_token(ME).access_token
        print(json.dumps({"x": x_url, "files": f"http://127.0.0.1:{port}", "token": token}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent is done
    await runner.cleanup()


async def measure(mode: str, size: int, where: dict[str, str]) -> tuple[float, float]:
    async with aiohttp.ClientSession() as session:
        slack = SlackApi(web_client("xoxb-bench", f"{where['files']}/api/", session), session)
        x = XApiClient(session, where["x"], timeout=600.0)

        def file(length: int) -> dict[str, object]:
            url = f"{where['files']}/files-pri/T1-F1/download/{length}/big.mp4"
            return {
                "id": "F1",
                "name": "big.mp4",
                "mimetype": "video/mp4",
                "size": length,
                "url_private_download": url,
            }

        async def relay(length: int) -> None:
            if mode == "stream":
                async with slack.open_file("T1", file(length), max_bytes=512 * MB) as source:
                    await x.upload_media(where["token"], source, media_type="video/mp4", category="dm_video")
            else:
                data = await slack.download_file("T1", file(length), max_bytes=512 * MB)
                await x.upload_media(
                    where["token"], BytesSource(data), media_type="video/mp4", category="dm_video"
                )

        idle = peak_rss_mb()
        await relay(MB // 2)  # warm up imports and connection pools, not the chunk buffers
        baseline = peak_rss_mb()
        started = time.monotonic()
        await relay(size)
        peak = peak_rss_mb()
        print(f"peak RSS: {idle:.1f} MB idle, {baseline:.1f} MB warmed up, {peak:.1f} MB after the big file")
        return peak - baseline, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--target-mb", type=float, default=48.0, help="allowed peak RSS growth")
    parser.add_argument("--mode", choices=("stream", "whole"), default="stream")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = args.size_mb * MB
    if args.serve:
        asyncio.run(serve(size))
        return 0
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--size-mb", str(args.size_mb)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        where = json.loads(child.stdout.readline())
        growth, seconds = asyncio.run(measure(args.mode, size, where))
    finally:
        if child.stdin is not None:
            child.stdin.close()
        child.wait(30)
    verdict = "OK" if growth <= args.target_mb else "OVER TARGET"
    print(
        f"{args.mode}: {args.size_mb} MB file relayed in {seconds:.1f} s; "
        f"peak RSS growth {growth:.1f} MB (target <= {args.target_mb:g} MB): {verdict}"
    )
    return 0 if growth <= args.target_mb else 1


if __name__ == "__main__":
    sys.exit(main())
