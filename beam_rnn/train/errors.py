"""The training package's errors, in the project's one hierarchy (`beam_rnn.core.errors`)."""

from beam_rnn.core.errors import BeamRnnError, InputError


class TrainerInputError(InputError):
    """The transformed input directory or a training input is missing, incomplete or unusable (exit 2)."""


class ExportError(BeamRnnError):
    """Something `export_model` needs is missing or inconsistent, or the export does not verify (exit 1)."""
