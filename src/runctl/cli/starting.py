"""What every `train` command does around starting a run: config, announcing it, following it."""

from __future__ import annotations

from typing import Any

from ..core.errors import Detached
from ..core.spec import RunSpec
from ..store import Store
from .common import Output, emit_json, exit_with, say


def offer_dashboard(opts: Any, run_id: str, output: Output) -> str | None:
    """With --dashboard: the run's page in the running dashboard (one is started detached if none
    answers), said on stderr in text mode, and opened in the browser with --open."""
    if not getattr(opts, "dashboard", False):
        return None
    from ..core.errors import RunctlError
    from ..dashboard.launch import ensure_running, run_url

    try:
        url = run_url(ensure_running(), run_id)
    except RunctlError as exc:  # the run is started: a dashboard that did not come up must not hide that
        say("runctl: warning: %s; %s" % (exc.message, exc.hint or "start one with: runctl dashboard"))
        return None
    if output == Output.text:
        say("  dashboard: %s" % url)
    if getattr(opts, "open_dashboard", False):
        import webbrowser

        webbrowser.open(url)
    return url


def announce_and_follow(
    db: Store,
    spec: RunSpec,
    state: dict[str, Any],
    output: Output,
    wait: bool,
    timeout: float | None,
    where: str,
    opts: Any = None,
) -> None:
    """Print the started run (its id on stdout) or, with --wait, follow it to its end and exit accordingly.

    `opts` (the train options) may ask for the run's dashboard page (--dashboard, --open)."""
    from .. import controller
    from .waiting import wait_for

    row = db.get(spec.run_id)
    assert row is not None
    if not wait:
        if output == Output.json:
            url = offer_dashboard(opts, spec.run_id, output)
            emit_json({**controller.view(row), **({"dashboard_url": url} if url else {})})
        else:
            print(spec.run_id)
            say("started run %s (%s) %s, pid %s" % (spec.run_id, spec.name, where, state.get("pid") or "-"))
            say("  follow: runctl runs logs %s --follow" % spec.run_id)
            say("  wait:   runctl runs wait %s" % spec.run_id)
            say("  stop:   runctl runs stop %s" % spec.run_id)
            offer_dashboard(opts, spec.run_id, output)
        return
    try:
        if output == Output.text:
            say("run %s (%s) started %s; Ctrl-C detaches" % (spec.run_id, spec.name, where))
        offer_dashboard(opts, spec.run_id, output)
        code = wait_for(db, row, output, timeout, stream_log=True)
    except KeyboardInterrupt:
        raise Detached(
            "detached from run %s; it keeps going" % spec.run_id, "reattach: runctl runs wait %s" % spec.run_id
        ) from None
    exit_with(code)


def follow_chain(db: Store, spec: RunSpec, request: Any, relaunch: Any, opts: Any, where: str) -> None:
    """`--auto-resume N`: follow the run, and each relaunch after a spot interruption, to the chain's end."""
    from ..spotresume import Chain

    if opts.output == Output.text:
        say(
            "run %s (%s) started %s; after a spot interruption it is relaunched and resumed up to %d time(s)"
            " while this command runs; Ctrl-C detaches (and ends the relaunches)"
            % (spec.run_id, spec.name, where, relaunch.auto_resume)
        )
    offer_dashboard(opts, spec.run_id, opts.output)
    chain = Chain(db, request, relaunch.auto_resume, relaunch.spot_fallback, say)
    try:
        code = chain.follow(spec.run_id, opts.output, opts.timeout)
    except KeyboardInterrupt:
        last = chain.runs[-1]
        raise Detached(
            "detached from run %s; it keeps going, but no relaunch follows an interruption" % last,
            "reattach: runctl runs wait %s" % last,
        ) from None
    exit_with(code)


def train_request(
    provider: str, opts: Any, script: str, script_args: list[str] | None, own: dict[str, Any], synced: dict[str, Any]
) -> Any:
    """The pipeline's StartRequest of a `<provider> train`: the shared options, the synced-host flags
    (`options.synced_host_options(**synced)`) and the provider's own options."""
    from ..pipeline import StartRequest
    from .options import synced_host_options

    options = synced_host_options(**synced)
    project_dir, setup = options.pop("project_dir"), options.pop("setup")
    return StartRequest(
        provider, script, project_dir, opts.name, opts.env, None, list(script_args or []), opts.notify,
        opts.metrics_regex, opts.checkpoint_dir, opts.resume_from, setup, opts.tty, list(opts.checkpoint_glob),
        opts.policies(), {**own, **options}, say=None if opts.output == Output.json else say,
        checkpoint_s3=opts.checkpoint_s3, forward_aws_credentials=opts.forward_aws_credentials, resume=opts.resume,
        data_s3=opts.data_s3,
    )  # fmt: skip


def run_train(
    request: Any, output: Output, wait: bool, timeout: float | None, where: str | None = None, opts: Any = None
) -> None:
    """The end of every `<provider> train`: start the request through the pipeline, then announce or follow."""
    from ..pipeline import start
    from .common import store

    db = store()
    spec, state = start(db, request)
    announce_and_follow(db, spec, state, output, wait, timeout, where or "on %s" % spec.host, opts)
