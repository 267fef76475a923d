"""reconciler: keep Infobip audience lists equal to Amplitude cohorts."""

__version__ = "0.1.0"
