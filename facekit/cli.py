"""The ``facekit`` command line: a thin shell over the Python API (facekit.extract, facekit.open, facekit.zoo).

Exit codes: 0 when every video succeeded (or was skipped as finished), 1 when any video failed,
2 when the run could not start (bad option, unknown stage or model, unwritable store).
"""

from __future__ import annotations

import contextlib
import json
import shlex
import sys

import click

from . import zoo
from .config import DEFAULT_STAGES, Config
from .version import __version__

_D = Config()  # defaults shown in --help

EXIT_FAILED = 1
EXIT_CANNOT_START = 2


def _weights(ctx, param, values) -> dict:
    out = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            raise click.BadParameter(f"{v!r}: expected NAME=PATH, e.g. yunet=/models/yunet.onnx")
        out[name] = path
    return out


def run_options(f):
    """Options shared by extract and its stage-subset commands (one meaning everywhere)."""
    opts = [
        click.argument("inputs", nargs=-1, required=True, metavar="INPUT..."),
        click.option("-o", "--out", required=True, type=click.Path(dir_okay=False),
                     help="The store to write (HDF5 index; shards go to OUT.h5.d/). Re-running resumes."),
        click.option("--stages", default=None, metavar="LIST",
                     help="Comma-separated stages to compute; prerequisites are added."),
        click.option("--fps", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="Sample frames at this rate, by timestamp (default: every frame)."),
        click.option("--max-side", type=click.IntRange(min=16), default=None,
                     help="Downscale decoded frames so the longer side is at most N pixels."),
        click.option("--batch-size", type=click.IntRange(min=1), default=_D.batch_size, show_default=True,
                     help="Frames per batch (memory is bounded by one batch per worker)."),
        click.option("--frame-rate", type=click.FloatRange(min=0, min_open=True), default=_D.frame_rate,
                     show_default=True, help="Frame rate of folders of image frames."),
        click.option("--frame-folders", type=click.Choice(["auto", "yes", "no"]), default=_D.frame_folders,
                     show_default=True,
                     help="Treat folders of images as one video (auto: when the images are numbered)."),
        click.option("--detector", default=_D.detector, show_default=True, help="Face detector model name."),
        click.option("--det-threshold", type=click.FloatRange(0, 1), default=_D.det_threshold, show_default=True,
                     help="Minimum detection score."),
        click.option("--det-nms", type=click.FloatRange(0, 1), default=_D.det_nms, show_default=True,
                     help="IoU above which overlapping detections are merged."),
        click.option("--det-size", type=click.IntRange(min=0), default=_D.det_size, show_default=True,
                     help="Downscale frames whose long side exceeds N pixels for the detector (0: never)."),
        click.option("--detect-every", type=click.IntRange(min=1), default=_D.detect_every, show_default=True,
                     metavar="N", help="Run the detector every N frames (and on scene cuts and lost faces); "
                     "follow faces from their landmarks in between (faces/source = 1). E.g. --detect-every 5."),
        click.option("--max-faces", type=click.IntRange(min=1), default=None,
                     help="Keep only the faces of the K main tracks (stage track)."),
        click.option("--primary", is_flag=True, help="Keep only the main face (the primary track)."),
        click.option("--per-shot", is_flag=True, help="Apply --max-faces/--primary within each shot."),
        click.option("--track-max-gap", type=click.FloatRange(min=0), default=_D.track_max_gap, show_default=True,
                     help="Seconds a track survives without a detection."),
        click.option("--landmarker", default=_D.landmarker, show_default=True,
                     help="68-point landmark model name (stage landmarks)."),
        click.option("--smooth", is_flag=True,
                     help="Smooth landmarks along each track (One-Euro filter; adds the track stage)."),
        click.option("--smooth-min-cutoff", type=click.FloatRange(min=0, min_open=True), default=_D.smooth_min_cutoff,
                     show_default=True, help="One-Euro cutoff in Hz for still points (lower: smoother)."),
        click.option("--smooth-beta", type=click.FloatRange(min=0), default=_D.smooth_beta, show_default=True,
                     help="One-Euro speed coefficient in s/pixel (higher: less lag when moving)."),
        click.option("--align-template", type=click.Choice(["arcface", "ffhq"]), default=_D.align_template,
                     show_default=True,
                     help="Crop template: arcface (5 key points, 112 px) or ffhq (68 landmarks, 256 px)."),
        click.option("--crop-size", type=click.IntRange(min=16), default=None,
                     help="Crop side in pixels (default: 112 arcface, 256 ffhq)."),
        click.option("--crop-margin", type=click.FloatRange(min=0), default=_D.crop_margin, show_default=True,
                     help="Extra field of view around the template, as a fraction of the crop side."),
        click.option("--images", type=click.Path(file_okay=False), default=None,
                     help="Also write crops as images: DIR/<video key>/track<id>/<frame>_<face>.jpg."),
        click.option("--format", "image_format", type=click.Choice(["jpg", "png"]), default=_D.image_format,
                     show_default=True, help="File format of --images."),
        click.option("--track-videos", is_flag=True,
                     help="Also write one mp4 of crops per track: DIR/<video key>/track<id>.mp4 (needs --images)."),
        click.option("--image-files/--no-image-files", "write_images", default=True, show_default=True,
                     help="With --images: write one image file per crop (--no-image-files: only --track-videos)."),
        click.option("--store-crops/--no-store-crops", "crops_in_store", default=True, show_default=True,
                     help="Write faces/crop into the store."),
        click.option("--parser", default=_D.parser, show_default=True,
                     help="Face parser (stage parse): landmarks68 (regions from the 68 landmarks, offline), "
                          "farl-lapa or farl-celebm (FaRL, downloaded on demand; needs torch)."),
        click.option("--masks", is_flag=True,
                     help="With --images: also write each face's label mask beside its crop as a palette PNG "
                          "(<frame>_<face>_mask.png; adds the crop and parse stages)."),
        click.option("--embed", "embed", default=_D.embed, show_default=True, metavar="NAME[,NAME...]",
                     help="Backbones of stage embed: sface, arcface-r50, efficientnet-lite0, enet-b0-8-best-vgaf, "
                          "clip-vit-b16, dinov2-small (faces/embed/<name>), e.g. --embed sface,dinov2-small."),
        click.option("--embed-dtype", type=click.Choice(["float32", "float16"]), default=_D.embed_dtype,
                     show_default=True, help="Storage type of faces/embed/*."),
        click.option("--embed-pool", type=click.Choice(["none", "track"]), default=_D.embed_pool, show_default=True,
                     help="track: also store the mean embedding of each track (tracks/embed/<name>; adds stage track)."),
        click.option("--embed-batch", type=click.IntRange(min=1), default=_D.embed_batch, show_default=True,
                     help="Face crops per backbone call."),
        click.option("--track-rejoin", type=click.FloatRange(-1, 1), default=None, metavar="COS",
                     help="Merge tracks that never share a frame when their mean SFace embeddings have cosine > COS "
                          "(e.g. 0.5; re-joins a person across gaps and cuts; adds stage track)."),
        click.option("--mel-n-mels", type=click.IntRange(min=1), default=_D.mel_n_mels, show_default=True,
                     help="log-Mel: number of mel bands."),
        click.option("--mel-n-fft", type=click.IntRange(min=16), default=_D.mel_n_fft, show_default=True,
                     help="log-Mel: FFT/window length in samples at 16 kHz."),
        click.option("--mel-hop", type=click.IntRange(min=1), default=_D.mel_hop, show_default=True,
                     help="log-Mel: hop in samples at 16 kHz."),
        click.option("--mel-window", default=_D.mel_window, show_default=True, help="log-Mel: window function."),
        click.option("--mel-fmin", type=float, default=_D.mel_fmin, show_default=True, help="log-Mel: lowest Hz."),
        click.option("--mel-fmax", type=float, default=_D.mel_fmax, show_default=True, help="log-Mel: highest Hz."),
        click.option("--mel-log-floor", type=float, default=_D.mel_log_floor, show_default=True,
                     help="log-Mel: power floor before 10*log10."),
        click.option("--mel-deltas", type=click.IntRange(0, 2), default=_D.mel_deltas, show_default=True,
                     help="log-Mel: append deltas (1) or deltas + delta-deltas (2): D = n_mels * (1 + N)."),
        click.option("--mel-delta-window", type=click.IntRange(min=1), default=_D.mel_delta_window,
                     show_default=True, help="log-Mel: frames each side of the delta regression (HTK/Kaldi: 2)."),
        click.option("--vggish-hop", type=click.FloatRange(min=0, min_open=True), default=_D.vggish_hop,
                     show_default=True, metavar="SECONDS",
                     help="VGGish: seconds between 0.96 s examples, a multiple of 0.01 "
                          "(e.g. --vggish-hop 0.04 for one example per 25 fps video frame)."),
        click.option("--vggish-pad", is_flag=True,
                     help="VGGish: zero-pad the end so the tail (and audio < 0.975 s) gets an example."),
        click.option("--vggish-postprocess", is_flag=True,
                     help="VGGish: AudioSet PCA + 8-bit quantisation (values 0..255; needs model vggish-pca)."),
        click.option("--vggish-batch-size", type=click.IntRange(min=1), default=_D.vggish_batch_size,
                     show_default=True, help="VGGish: examples per forward pass."),
        click.option("--whisper-model", default=_D.whisper_model, show_default=True, metavar="NAME",
                     help="Whisper checkpoint (stage whisper): whisper-tiny[.en], -base[.en], -small[.en], "
                          "-medium[.en], -large-v1/-v2/-v3, -large-v3-turbo (or turbo)."),
        click.option("--whisper-layer", default=_D.whisper_layer, show_default=True, metavar="LAYER",
                     help="Whisper hidden state: last, an index (0 = conv stem, k = block k, -1 = last, "
                          "after the final LayerNorm) or a comma list averaged, e.g. 4,5,-1."),
        click.option("--whisper-batch-size", type=click.IntRange(min=1), default=_D.whisper_batch_size,
                     show_default=True, help="Whisper: 30 s windows per encoder call."),
        click.option("--whisper-fp32", is_flag=True,
                     help="Whisper on CUDA: float32 (no TF32) instead of openai-whisper's float16: slower, closer to the CPU."),
        click.option("--weights", "weights", multiple=True, callback=_weights, metavar="NAME=PATH",
                     help="Use a local weight file for model NAME in this run (repeatable)."),
        click.option("--device", default="cpu", show_default=True, metavar="cpu|cuda|cuda:N|cuda:N,M",
                     help="Where models and crop warps run: cuda = every visible GPU, cuda:0,1 = GPUs 0 and 1, "
                          "one worker per GPU (e.g. --device cuda:0,1 --landmarker fan2d). Stops at once if "
                          "CUDA is unusable; never falls back to the CPU."),
        click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Worker processes, each writing its own shards (CPU runs); each gets 1/N of the "
                          "CPUs for its threads (the environment variable FACEKIT_THREADS caps them)."),
        click.option("--workers-per-device", type=click.IntRange(min=1), default=1, show_default=True,
                     help="With --device cuda: worker processes per GPU."),
        click.option("--shard", default=None, metavar="I/N",
                     help="Process only the I-th of N slices of the inputs (job arrays)."),
        click.option("--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                     help="local: worker processes on this machine; ray: --workers actors on a Ray cluster "
                          "(the store must be on a file system every node sees)."),
        click.option("--ray-address", default=None, metavar="HOST:PORT",
                     help="With --backend ray: the cluster to connect to (default: $RAY_ADDRESS, else a local Ray)."),
        click.option("--overwrite", is_flag=True, help="Recompute finished videos instead of skipping them."),
        click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary line."),
        click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout."),
        click.option("--debug", is_flag=True, help="Print tracebacks of failures."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _oneline(text: str) -> str:
    """``text`` on one line: control characters of a file name (newline, tab...) escaped."""
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for c in str(text))


def _run(command: str, inputs, out, stages, quiet, as_json, debug, **options):
    from .cluster import ClusterError
    from .engine import extract
    from .inputs import InputError
    from .stages import StageError, available
    from .store import StoreError

    if stages is None:
        avail = set(available())
        stages = [s for s in DEFAULT_STAGES[command] if s in avail]

    def on_result(r):
        if r.status == "failed":
            click.echo(f"facekit: {_oneline(r.path)}: {_oneline(r.error)}", err=True)
        elif r.warnings and not quiet:
            for w in r.warnings:
                click.echo(f"facekit: warning: {_oneline(r.path)}: {_oneline(w)}", err=True)

    argv = "facekit " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    # with --json, stdout holds the summary and nothing else: whatever a library prints during the
    # run (Ray's messages about a lost worker, for one) goes to stderr
    quiet_stdout = contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext()
    try:
        with quiet_stdout:
            summary = extract(list(inputs), out, stages=stages, command=argv,
                              progress=None if not quiet else False, debug=debug, on_result=on_result, **options)
    except (StageError, zoo.ModelError, StoreError, InputError, ClusterError, ValueError) as e:
        if debug:
            raise
        click.echo(f"facekit: error: {e}", err=True)
        sys.exit(EXIT_CANNOT_START)
    for w in summary.warnings:
        if not quiet:
            click.echo(f"facekit: warning: {_oneline(w)}", err=True)
    if summary.stopped:
        click.echo(f"facekit: error: {summary.stopped}", err=True)
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2, default=str))
    if not quiet:
        click.echo(f"facekit: {len(summary.processed)} processed, {len(summary.skipped)} skipped, "
                   f"{len(summary.failed)} failed in {summary.seconds:.1f} s -> {out}", err=True)
    sys.exit(0 if summary.ok else EXIT_FAILED)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="facekit")
def main():
    """facekit: face videos -> time-aligned training features in one HDF5 store.

    \b
    Examples:
      facekit extract videos/ -o feats.h5          # faces, tracks, landmarks, pose, log-Mel
      facekit detect clip.mp4 -o faces.h5 --fps 5  # face boxes only, 5 frames per second
      facekit audio @list.txt -o mel.h5            # log-Mel for the files listed in list.txt
      find data -name '*.mp4' | facekit extract - -o feats.h5
      facekit info feats.h5                        # what is in a store
      facekit verify feats.h5                      # is it whole? (exit code 1 if not)
      facekit export feats.h5 --to feats/          # .npy per video and stream, rows = video frames
      facekit merge /scratch/job*/feats.h5 -o feats.h5   # join stores written separately
      facekit models list                          # the model zoo
    """


def _stage_command(name: str, summary: str, examples: str):
    stages_default = ",".join(DEFAULT_STAGES[name])

    @run_options
    def cmd(inputs, out, stages, quiet, as_json, debug, **options):
        _run(name, inputs, out, stages, quiet, as_json, debug, **options)

    cmd.__doc__ = f"""{summary}

    INPUT is a video, an image, a folder (searched recursively; a folder of numbered
    image frames is one video), @LIST.txt (one path a line) or - (paths on stdin).
    Default stages: {stages_default} (those available in this version).

    \b
    Examples:
{examples.strip(chr(10))}
    """
    return main.command(name)(cmd)


_stage_command("extract", "Compute features for every input video into one store.", """
      facekit extract videos/ -o feats.h5
      facekit extract a.mp4 b.mkv -o feats.h5 --stages detect,mel --fps 10
      facekit extract frames_dir/ -o feats.h5 --frame-rate 25 --max-side 960
      facekit extract videos/ -o feats.h5 --shard 2/8      # job 2 of an 8-job array
""")
_stage_command("detect", "Detect faces (boxes, scores, 5 key points) in every frame.", """
      facekit detect clip.mp4 -o faces.h5
      facekit detect videos/ -o faces.h5 --det-threshold 0.6 --det-size 1280
""")
_stage_command("align", "Detect, track and landmark faces and align them to a crop template (faces/affine).", """
      facekit align videos/ -o feats.h5
      facekit align videos/ -o feats.h5 --align-template ffhq --crop-size 224
""")
_stage_command("crop", "Aligned face crops into the store (faces/crop) and/or as image files.", """
      facekit crop videos/ -o feats.h5                             # 112x112 ArcFace crops
      facekit crop videos/ -o feats.h5 --images crops/ --no-store-crops --format png
      facekit crop videos/ -o feats.h5 --align-template ffhq --crop-margin 0.1
""")
_stage_command("parse", "Face parsing: a label mask per face in its aligned crop (faces/parsing).", """
      facekit parse videos/ -o feats.h5                          # landmarks68 regions, offline
      facekit parse videos/ -o feats.h5 --parser farl-lapa       # FaRL LaPa model (downloaded once)
      facekit crop videos/ -o feats.h5 --images crops/ --masks   # crops + <frame>_<face>_mask.png
""")
_stage_command("embed", "Frozen-backbone embeddings of aligned face crops (faces/embed/<name>).", """
      facekit embed videos/ -o feats.h5                                  # 128-d SFace identity embeddings
      facekit embed videos/ -o feats.h5 --embed sface,efficientnet-lite0 --embed-dtype float16
      facekit embed videos/ -o feats.h5 --embed-pool track --track-rejoin 0.5
""")
_stage_command("audio", "Compute audio features (log-Mel; Whisper encoder with --stages whisper) of every input.", """
      facekit audio videos/ -o audio.h5
      facekit audio speech.wav -o audio.h5 --mel-n-mels 64 --mel-hop 320
      facekit audio videos/ -o audio.h5 --stages vggish --vggish-hop 0.04   # VGGish every 40 ms
      facekit audio videos/ -o audio.h5 --stages mel,whisper --whisper-model whisper-small
""")


@main.command()
@click.argument("store_path", metavar="OUT.h5", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--brief", is_flag=True, help="Totals only, no per-video table.")
def info(store_path, as_json, brief):
    """Summarise a store: videos, frames, faces, streams and failures.

    \b
    Examples:
      facekit info feats.h5
      facekit info feats.h5 --json | jq '.failures'
    """
    from .report import format_info, store_info
    from .store import StoreError

    try:
        d = store_info(store_path)
    except StoreError as e:
        click.echo(f"facekit: error: {e}", err=True)
        sys.exit(EXIT_CANNOT_START)
    click.echo(json.dumps(d, indent=2, default=str) if as_json else format_info(d, per_video=not brief))


@main.command()
@click.argument("store_path", metavar="OUT.h5", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of text.")
@click.option("--quick", is_flag=True, help="Check structure and lengths only; do not read every data block back.")
def verify(store_path, as_json, quick):
    """Check a store: shards open, the index matches them, every finished video holds the
    datasets its stages promise with consistent lengths, failures carry their error.

    Prints one line per problem (and per warning, e.g. temporary files left by a killed run).
    Exit code 0 when there is no problem, 1 when there is any, 2 when OUT.h5 is not a store.

    \b
    Examples:
      facekit verify feats.h5
      facekit verify feats.h5 --quick            # skip reading the data back
      facekit verify feats.h5 --json | jq '.problems[].line'
      facekit verify feats.h5 || facekit extract videos/ -o feats.h5   # resume a broken run
    """
    from .store import StoreError
    from .verify import format_report, verify as run_verify

    try:
        report = run_verify(store_path, read_data=not quick)
    except StoreError as e:
        click.echo(f"facekit: error: {e}", err=True)
        sys.exit(EXIT_CANNOT_START)
    click.echo(json.dumps(report, indent=2, default=str) if as_json else format_report(report))
    sys.exit(0 if report["ok"] else EXIT_FAILED)


@main.command()
@click.argument("store_path", metavar="OUT.h5", type=click.Path(exists=True, dir_okay=False))
@click.option("--to", "to", required=True, type=click.Path(file_okay=False), help="Folder to write into.")
@click.option("--format", "fmt", type=click.Choice(["npy", "csv"]), default="npy", show_default=True,
              help="npy: one .npy array per video and stream; csv: one table per video and stream.")
@click.option("--clock", default="video", show_default=True, metavar="video|native|STREAM",
              help="Rows of every file: video frames, each stream's own rows, or an audio stream's windows (e.g. mel).")
@click.option("--method", type=click.Choice(["nearest", "linear", "mean"]), default="nearest", show_default=True,
              help="How a stream is put on the clock: nearest row, linear interpolation, or mean over each row's span.")
@click.option("--streams", default=None, metavar="LIST",
              help="Comma-separated streams (mel, whisper, vggish, faces.landmarks, faces.embed.sface, ...); "
                   "default: every audio stream and face dataset except crops, masks and affines.")
@click.option("--faces", "faces_sel", type=click.Choice(["primary", "largest"]), default="primary", show_default=True,
              help="On a frame clock, which face gives each frame's row: the primary track's or the largest.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary line.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest (what was written) as JSON.")
def export(store_path, to, fmt, clock, method, streams, faces_sel, quiet, as_json):
    """Write a store's features as one file per video and stream, all on one clock.

    Files go to DIR/<video key>/<stream>.npy|csv (plus t.npy and frame.npy for npy), and
    DIR/manifest.json lists what was written. Rows without data (no face in the frame, a video
    longer than its audio) are NaN.

    \b
    Examples:
      facekit export feats.h5 --to feats/                        # every stream, one row per video frame
      facekit export feats.h5 --to feats/ --method mean          # audio averaged over each frame's span
      facekit export feats.h5 --to csv/ --format csv --streams mel,faces.landmarks
      facekit export feats.h5 --to raw/ --clock native           # each stream on its own clock
    """
    from .export import ExportError, export as run_export

    try:
        manifest = run_export(store_path, to, format=fmt, clock=clock, method=method, streams=streams,
                              faces=faces_sel, progress=False if quiet else None)
    except ExportError as e:
        click.echo(f"facekit: error: {e}", err=True)
        sys.exit(EXIT_CANNOT_START)
    for key, why in manifest["failed"].items():
        click.echo(f"facekit: {_oneline(key)}: not exported (failed video: {_oneline(why)})", err=True)
    for key, why in manifest["skipped"].items():
        click.echo(f"facekit: {_oneline(key)}: not exported ({_oneline(why)})", err=True)
    if as_json:
        click.echo(json.dumps(manifest, indent=2))
    if not quiet:
        click.echo(f"facekit: exported {len(manifest['videos'])} videos ({len(manifest['failed'])} failed, "
                   f"{len(manifest['skipped'])} skipped) -> {to}", err=True)
    sys.exit(EXIT_FAILED if manifest["failed"] else 0)


@main.command()
@click.argument("sources", nargs=-1, metavar="SRC.h5...", type=click.Path(exists=True))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="The store to merge into.")
@click.option("--overwrite", is_flag=True, help="A video finished in both: take the source's (default: keep OUT's).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def merge(sources, out, overwrite, as_json):
    """Join stores written separately into OUT.h5 (and rebuild its index).

    Each video's shard file is copied into OUT.h5.d/ (atomically); a finished result replaces a
    failure, never the reverse; a video finished in both is a conflict (kept, exit code 1) unless
    --overwrite. Jobs that wrote into the same store (--shard I/N) need no merge; with no SRC,
    merge only rebuilds OUT's index.

    \b
    Examples:
      facekit merge /scratch/job*/feats.h5 -o feats.h5   # stores of a job array on node-local disks
      facekit merge -o feats.h5                          # rebuild the index from feats.h5.d/
    """
    from .merge import MergeError, merge as run_merge
    from .store import StoreError

    try:
        rep = run_merge(sources, out, overwrite=overwrite)
    except (MergeError, StoreError) as e:
        click.echo(f"facekit: error: {e}", err=True)
        sys.exit(EXIT_CANNOT_START)
    for c in rep.conflicts:
        click.echo(f"facekit: conflict: {_oneline(c)}", err=True)
    for u in rep.unreadable:
        click.echo(f"facekit: {_oneline(u)}: unreadable shard file, not merged", err=True)
    if as_json:
        click.echo(json.dumps(rep.to_dict(), indent=2))
    click.echo(f"facekit: {len(rep.copied)} copied, {len(rep.replaced)} replaced, {len(rep.kept)} kept, "
               f"{len(rep.conflicts)} conflicts -> {out} ({rep.videos} videos)", err=True)
    sys.exit(0 if rep.ok else EXIT_FAILED)


@main.command()
@click.argument("src", metavar="INPUT", type=click.Path(exists=True))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False),
              help="A .png/.jpg contact sheet of sampled frames, or an .mp4/.mkv video with overlays.")
@click.option("--from", "store_path", type=click.Path(exists=True), default=None,
              help="Draw the results stored in this store (default: compute them now).")
@click.option("--stages", default=None, metavar="LIST", help="Stages to compute when --from is not given.")
@click.option("--frames", "n_frames", type=click.IntRange(min=1), default=12, show_default=True,
              help="Frames in a contact sheet.")
@click.option("--columns", type=click.IntRange(min=1), default=4, show_default=True, help="Contact-sheet columns.")
def preview(src, out, store_path, stages, n_frames, columns):
    """Draw boxes, track ids, landmarks and pose axes over INPUT's frames.

    \b
    Examples:
      facekit preview clip.mp4 -o sheet.png                  # compute and show 12 frames
      facekit preview clip.mp4 --from feats.h5 -o check.mp4  # what the store holds, as a video
    """
    from .preview import PreviewError, preview as run_preview
    from .stages import StageError
    from .store import StoreError

    try:
        click.echo(run_preview(src, out, store_path, n_frames=n_frames, columns=columns, stages=stages))
    except (StoreError, StageError, zoo.ModelError) as e:
        click.echo(f"facekit: error: {e}", err=True)
        sys.exit(EXIT_CANNOT_START)
    except PreviewError as e:
        click.echo(f"facekit: error: {e}", err=True)
        sys.exit(EXIT_FAILED)


@main.group()
def models():
    """The model zoo: list, locate, fetch and verify model weights.

    \b
    Resolution order: --weights NAME=PATH, then $FACEKIT_HOME/models/NAME/ (default
    ~/.cache/facekit), then a file shipped inside an installed package, then a download
    (sha256-checked; disabled by FACEKIT_OFFLINE=1).
    """


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def models_list(as_json):
    """List registered models with task, source, licences and availability.

    \b
    Example:
      facekit models list --json
    """
    rows = [zoo.describe(m) for m in zoo.REGISTRY.values()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    cols = ("name", "task", "runtime", "status", "source")
    width = {c: max([len(c)] + [len(str(r[c])) for r in rows]) for c in cols[:-1]}
    indent = " " * (width["name"] + 2)
    click.echo("  ".join(c.upper().ljust(width.get(c, 0)) for c in cols).rstrip())
    for i, r in enumerate(rows):
        if i:
            click.echo()
        click.echo("  ".join(str(r[c]).ljust(width.get(c, 0)) for c in cols).rstrip())
        click.echo(f"{indent}{r['description']}")
        click.echo(f"{indent}licence: code {r['licence_code']}; weights {r['licence_weights']}")
        if r["status"] == "available":
            click.echo(f"{indent}file:    {r['path']} ({r['origin']})")
        elif r["status"] == "missing":
            f = r["files"][0]
            how = (f"facekit models pull {r['name']}" if f["url"] or f["package"]
                   else f"facekit models add {r['name']} FILE")
            click.echo(f"{indent}get it:  {how}")
        else:
            click.echo(f"{indent}problem: {r['problem']}")


@models.command("path")
@click.argument("name")
def models_path(name):
    """Print the weight file a model resolves to (no download).

    \b
    Example:
      facekit models path yunet
    """
    try:
        click.echo(zoo.resolve(name, download=False).path)
    except zoo.ModelError as e:
        click.echo(f"facekit: error: {e}", err=True)
        sys.exit(EXIT_FAILED)


@models.command("pull")
@click.argument("names", nargs=-1)
@click.option("--all", "pull_all", is_flag=True, help="Every registered model.")
def models_pull(names, pull_all):
    """Put model weights into the cache (copy from a package or download; sha256-checked).

    \b
    Examples:
      facekit models pull yunet
      FACEKIT_HOME=/shared/facekit facekit models pull --all   # then copy to offline nodes
    """
    names = list(zoo.REGISTRY) if pull_all else list(names)
    if not names:
        raise click.UsageError("name a model, or use --all")
    bad = 0
    for n in names:
        try:
            click.echo(f"{n}: {zoo.pull(n)}")
        except (zoo.ModelError, OSError) as e:
            click.echo(f"facekit: error: {e}", err=True)
            bad += 1
    sys.exit(EXIT_FAILED if bad else 0)


@models.command("verify")
@click.argument("names", nargs=-1)
def models_verify(names):
    """Check that models resolve to files with the registry's sha256.

    Without NAME: every embedded model, and every download-only model that is present (those not
    downloaded yet are listed, not failed). A named model that is missing fails.

    \b
    Examples:
      facekit models verify
      facekit models verify yunet fan2d
    """
    bad = 0
    for n in names or list(zoo.REGISTRY):
        try:
            ok, msg = zoo.verify(n)
        except zoo.ModelError as e:
            ok, msg = False, str(e)
        if not ok and not names and n in zoo.REGISTRY and not zoo.REGISTRY[n].embedded \
                and zoo.describe(zoo.REGISTRY[n])["status"] == "missing":
            click.echo(f"{n}: not downloaded (optional; `facekit models pull {n}`)")
            continue
        click.echo(msg if ok else f"facekit: error: {msg}", err=not ok)
        bad += not ok
    sys.exit(EXIT_FAILED if bad else 0)


@models.command("add")
@click.argument("name")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--force", is_flag=True, help="Install even if the sha256 differs from the registry's.")
def models_add(name, path, force):
    """Install a local weight file into the cache as model NAME (sha256-checked).

    \b
    Example:
      facekit models add yunet ~/Downloads/face_detection_yunet_2023mar_int8bq.onnx
    """
    try:
        click.echo(zoo.add(name, path, force=force))
    except zoo.ModelError as e:
        click.echo(f"facekit: error: {e}", err=True)
        sys.exit(EXIT_FAILED)


if __name__ == "__main__":  # pragma: no cover
    main()
