"""Drop this file into Airflow's dags folder (Airflow 3, with data-exhaust installed).

The tasks read the usual settings from the worker's environment:

    EXHAUST_SERVER_URL=https://exhaust.example.org
    EXHAUST_SYNC_STATES=/opt/airflow/config/exhaust_config.py
    EXHAUST_SYNC_DB=postgresql+psycopg://airflow@db/exhaust_sync
    EXHAUST_TIMEZONE=Asia/Kolkata

and the secrets the states file names as env:VAR. See docs/howto/client-sync.md.
"""

from data_exhaust.contrib.airflow import build_dags

exhaust_requester, exhaust_request_handler = build_dags()
