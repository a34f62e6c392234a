"""The `neuroscan` command: one Typer app.

Each group of commands lives in its own module; those modules import heavy libraries
(TensorFlow, uvicorn, Celery) inside the command functions, so `neuroscan --help` and the
API-side commands stay fast and TensorFlow-free.
"""

from __future__ import annotations

import typer

from cli import audit, client, config, dicom, keys, lifecycle, model, service

app = typer.Typer(
    name="neuroscan",
    help="NeuroScan: explainable brain-MRI tumour triage (research use only).",
    no_args_is_help=True,
    add_completion=False,
)

def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"neuroscan {version('neuroscan')}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """NeuroScan: explainable brain-MRI tumour triage (research use only)."""


# Service: run the system.
app.command("serve")(service.serve)
app.command("api")(service.api)
app.command("worker")(service.worker)
app.command("migrate")(service.migrate)
app.command("requeue")(service.requeue)
app.command("settings")(config.settings)
app.add_typer(keys.keys_app, name="keys")
app.command("webhook-secret")(keys.webhook_secret)
app.command("dicom-listen")(dicom.dicom_listen)
app.command("purge")(lifecycle.purge)
app.command("export")(lifecycle.export)
app.command("import")(lifecycle.import_)
app.command("retention")(lifecycle.retention)
app.add_typer(audit.audit_app, name="audit")
app.command("privacy")(audit.privacy)

# Model: data, training, evaluation, offline prediction.
app.command("synth")(model.synth)
app.command("train")(model.train)
app.command("evaluate")(model.evaluate)
app.command("predict")(model.predict)
app.command("fit-gate")(model.fit_gate)

# Client: talk to a running service.
app.command("submit")(client.submit)


if __name__ == "__main__":
    app()
