"""Client sync: scheduled exhausts of a state's bots, loaded into the state's own database.

See ``shared/spec/client-sync.md`` and ``docs/howto/client-sync.md``. The modules:

* :mod:`~data_exhaust.sync.steps` — :class:`~data_exhaust.sync.steps.Sync`, the request and
  handle steps, used alike by ``exhaust sync …`` and the Airflow DAGs
  (:mod:`data_exhaust.contrib.airflow`);
* :mod:`~data_exhaust.sync.states` — the states file;
* :mod:`~data_exhaust.sync.control` — the control database (``cron_config``,
  ``exhaust_requests``);
* :mod:`~data_exhaust.sync.windows` — cron schedules cut into date windows;
* :mod:`~data_exhaust.sync.loader` and :mod:`~data_exhaust.sync.copy_load` — loading files into
  a state's database; :mod:`~data_exhaust.sync.files` — downloading and opening them;
* :mod:`~data_exhaust.sync.daemon` — ``exhaust sync daemon``.

This package imports nothing itself, so a command that needs one module (``exhaust sync
schedule list``) does not load the others.
"""
