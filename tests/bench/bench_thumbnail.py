#!/usr/bin/python3
"""Worker thumbnails: our 256 px JPEG thumbnail (libvips, fm_thumb --thumb-only) against ImageMagick's
`convert FILE -thumbnail 256x256 out.jpg` on the same 12 MP (4000x3000) JPEG.

    /usr/bin/python3 tests/bench/bench_thumbnail.py [--runs 10] [--fm-thumb BUILD/fm_thumb]

Each run is a fresh process (as a worker job would pay a decode, not a warm cache). For fm_thumb two figures are
kept: the wall time of the whole process (start-up, libvips init, sniff, thumbnail, write) and the time of the
thumbnail step alone as fm_thumb measures it, cold (the first in its process) and warm (the next ones in one
process, as in the long-running worker). ImageMagick is timed as a whole process. The ratio the target
(>= 5x) is held to is process against process. A third, informative line times ImageMagick with its JPEG
shrink-on-load hint (-define jpeg:size=512x512), the closest it comes to what libvips does by default.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.path.dirname(os.path.dirname(HERE))


def find_fm_thumb(explicit):
    candidates = [explicit] if explicit else []
    if os.environ.get("FM_BUILD_DIR"):
        candidates.append(os.path.join(os.environ["FM_BUILD_DIR"], "fm_thumb"))
    candidates += [os.path.join(SOURCE_DIR, "build", "fm_thumb"), "/tmp/build-media/fm_thumb"]
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    sys.exit("fm_thumb not found: build it (cmake --build BUILD --target fm_thumb) and pass --fm-thumb")


def wait_for_imagemagick(timeout_s=600):
    """infra/setup installs ImageMagick; until `convert -version` names it, the setup is still running."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            out = subprocess.run(["convert", "-version"], capture_output=True, text=True).stdout
            if "ImageMagick" in out:
                return out.splitlines()[0]
        except FileNotFoundError:
            pass
        if time.monotonic() > deadline:
            sys.exit("ImageMagick's convert is not installed (infra/setup installs the imagemagick package)")
        print("waiting for ImageMagick (infra/setup still running)...", file=sys.stderr)
        time.sleep(10)


def make_photo(path):
    """A 4000x3000 JPEG with photo-like content: a plasma fractal (smooth gradients and fine detail), q90."""
    subprocess.run(["convert", "-seed", "42", "-size", "4000x3000", "plasma:", "-quality", "90", path], check=True)


def timed(cmd):
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed_ms = (time.perf_counter() - start) * 1000
    if proc.returncode != 0:
        sys.exit("%s failed: %s" % (" ".join(cmd), proc.stderr.strip()))
    return elapsed_ms, proc.stdout


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--fm-thumb", help="path of the fm_thumb tool (default: FM_BUILD_DIR, build/)")
    args = parser.parse_args()
    fm_thumb = find_fm_thumb(args.fm_thumb)
    im_version = wait_for_imagemagick()

    work = tempfile.mkdtemp(prefix="fm-bench-thumb-")
    try:
        photo = os.path.join(work, "photo.jpg")
        make_photo(photo)
        ours_cmd = [fm_thumb, "--thumb-only", photo, work]
        im_cmd = ["convert", photo, "-thumbnail", "256x256", os.path.join(work, "im.jpg")]
        im_hint_cmd = ["convert", "-define", "jpeg:size=512x512", photo, "-thumbnail", "256x256",
                       os.path.join(work, "im_hint.jpg")]
        for cmd in (ours_cmd, im_cmd, im_hint_cmd):  # warm the page cache and the dynamic loader
            timed(cmd)

        ours_wall, ours_step, im_wall, im_hint_wall = [], [], [], []
        for _ in range(args.runs):
            wall, out = timed(ours_cmd)
            ours_wall.append(wall)
            ours_step.append(float(out.strip()))
            im_wall.append(timed(im_cmd)[0])
            im_hint_wall.append(timed(im_hint_cmd)[0])

        # a long-running worker: the same process makes runs+1 thumbnails; the first pays libvips' set-up
        _, out = timed([fm_thumb, "--thumb-only", "--repeat", str(args.runs + 1), photo, work])
        ours_warm = [float(line) for line in out.split()][1:]

        check = subprocess.run(["identify", "-format", "%wx%h", os.path.join(work, "thumb.jpg")],
                               capture_output=True, text=True).stdout
        p50 = statistics.median
        print("input: 4000x3000 JPEG, %d bytes; %d runs; %s; cores: %d"
              % (os.path.getsize(photo), args.runs, im_version, os.cpu_count()))
        print("ours (fm_thumb --thumb-only, 256 px JPEG thumbnail = %s):" % check)
        print("  process p50 %8.1f ms   thumbnail step p50 %8.1f ms (cold)   %8.1f ms (warm, in one process)"
              % (p50(ours_wall), p50(ours_step), p50(ours_warm)))
        print("ImageMagick convert -thumbnail 256x256:")
        print("  process p50 %8.1f ms" % p50(im_wall))
        print("ImageMagick with -define jpeg:size=512x512 (informative):")
        print("  process p50 %8.1f ms" % p50(im_hint_wall))
        ratio = p50(im_wall) / p50(ours_wall)
        print("ratio (ImageMagick process / our process): %.1fx  (target >= 5x: %s)"
              % (ratio, "met" if ratio >= 5 else "NOT met"))
        print("ratio (ImageMagick process / our thumbnail step, cold): %.1fx" % (p50(im_wall) / p50(ours_step)))
        print("ratio (ImageMagick process / our thumbnail step, warm): %.1fx" % (p50(im_wall) / p50(ours_warm)))
        print("ratio (ImageMagick with size hint / our process): %.1fx" % (p50(im_hint_wall) / p50(ours_wall)))
        return 0 if ratio >= 5 else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
