"""Data Exhaust: on-demand exports of chatbot telemetry, Sunbird-compatible."""

__version__ = "0.1.0"
