"""The Airflow operators of the platform's dated Spark jobs (imported by the DAG files at parse time: no engines
here).

:class:`StagedSparkSubmitOperator` is the one parameterised base: the Spark provider's ``SparkSubmitOperator``
(connection ``spark_default``: ``local[2]`` natively, ``spark://spark-master:7077`` in compose) running a
spark-submit application of :mod:`core.jobs` for the UTC date of the run's logical date. When the job reports
bad data (a staged error record, exit 3) the task fails at once without retries (``AirflowFailException``: a
retry cannot fix the data); any other failure (Spark or the lake unavailable) is retried per the DAG's
default_args. Returns the job's staged result record as the task's XCom.

:class:`LakeSparkSubmitOperator` (the base of the staged ones, used as is for the training and prediction jobs)
adds the S3A connector's jars for applications whose Spark reads or writes the lake.

:class:`DailyFactsSubmitOperator` runs the ETL's ``etl/jobs/daily_facts.py``; ``ml.operators`` subclasses the
base for the feature job. The base lives here, not in ``core`` (the base package stays free of Airflow) and ``ml``
builds on ``etl`` (the features are built from the ETL's star schema).
"""

from __future__ import annotations

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import BaseSensorOperator

from core.settings import REPO_ROOT

APPLICATION = str(REPO_ROOT / "etl" / "jobs" / "daily_facts.py")


class LakeSparkSubmitOperator(SparkSubmitOperator):
    """The Spark provider's ``SparkSubmitOperator`` for an application whose Spark reads or writes the lake itself
    (``s3a://``: :meth:`core.lake.Lake.spark_uri`): on an S3 lake the S3A connector's jars go in ``--jars``
    (:func:`core.spark.connector_jars`, looked up at execution on the worker, not when the DAG is parsed), so the
    driver and the cluster's executors can load it. Jars given explicitly are kept."""

    #: whether the application reads or writes the lake from Spark (a subclass may say no)
    reads_lake: bool = True

    def execute(self, context):
        """Run spark-submit (the provider's ``SparkSubmitOperator.execute``) after setting ``--jars`` to the S3A
        connector's jars when :attr:`reads_lake` and no jars were given (none on a folder lake: then left unset).

        Returns:
            what the provider's ``execute`` returns (None).

        Raises:
            ConfigError: an S3 lake whose S3A connector jars were never resolved (:func:`core.spark.connector_jars`).
            AirflowException: spark-submit failed (non-zero exit status, e.g. the application's),
                from the provider; the task is retried per the DAG's default_args.
        """
        if self.reads_lake and not self.jars:
            from core.spark import connector_jars

            self.jars = ",".join(connector_jars(lake=True)) or None
        return super().execute(context)


class StagedSparkSubmitOperator(LakeSparkSubmitOperator):
    """spark-submit of a dated job for the run's UTC date (``date_flag`` set at execution); the job stages its
    result and error records in the lake. A subclass sets :attr:`job_application`, :attr:`job_name`,
    :attr:`date_flag`, :attr:`job_module` and, when its records are not JSON files at
    ``job_module.staging(lake, day, name)``, where they are (:meth:`read_record`)."""

    #: the spark-submit application (path), its Spark app name and its date option
    job_application: str
    job_name: str
    date_flag: str
    #: the job's logic module, imported at execution: ``clear_error(lake, day)``, ``ERROR_NAME``, ``RESULT_NAME``
    job_module: str
    #: a staged job whose Spark reads the lake says so (its staged records go through pyarrow either way)
    reads_lake: bool = False

    def __init__(self, **kwargs):
        kwargs.setdefault("application", self.job_application)
        kwargs.setdefault("conn_id", "spark_default")
        kwargs.setdefault("name", self.job_name)
        super().__init__(**kwargs)

    @staticmethod
    def read_record(sf, lake, day, name: str) -> dict | None:
        """The staged record ``name`` of the run for ``day`` (``sf``: the :attr:`job_module`), None when absent:
        the JSON file at ``sf.staging(lake, day, name)`` (:meth:`core.lake.Lake.read_json`; the feature and
        training jobs). A job that stages its records otherwise overrides this."""
        return lake.read_json(*sf.staging(lake, day, name))

    def execute(self, context):
        """Run the job for the run's UTC date and return its staged result record.

        Appends ``[date_flag, <UTC date of the logical date>]`` to the task's ``application_args`` (none for the
        dated jobs, ``--features <path>`` for training), removes the date's staged
        error record (``clear_error``), runs spark-submit (:meth:`LakeSparkSubmitOperator.execute`), then reads
        the staged ``RESULT_NAME`` record.

        Returns:
            the result record (dict, the task's XCom), or None when the job staged none.

        Raises:
            ValueError: the run has no logical date (:func:`core.dagconf.target_date`).
            AirflowFailException: spark-submit failed and the job staged an error record (bad data: exit 3);
                message ``<error>: <message>`` of the record; the task fails without retries.
            Exception: spark-submit failed without an error record (the provider's ``AirflowException``,
                re-raised), or the lake is unavailable: retried per the DAG's default_args.
        """
        return self._staged(context, lambda: super(StagedSparkSubmitOperator, self).execute(context))

    def resubmit(self, context) -> dict | None:
        """spark-submit this job again for the run's UTC date from *another* task of the same run (the quality
        check's retry rebuilds the day when the lake changed during the run): the same application, arguments,
        conf and connection, through the provider's ``SparkSubmitHook`` (an operator's ``execute`` may only be
        called by its own task runner). The operator itself is left unchanged (a copy is submitted).

        Returns / Raises: as :meth:`execute`.
        """
        import copy

        op = copy.copy(self)
        op.application_args = list(self.application_args or [])
        op.conf = dict(self.conf or {})
        op._hook = None

        def submit():
            if op.reads_lake and not op.jars:
                from core.spark import connector_jars

                op.jars = ",".join(connector_jars(lake=True)) or None
            op._get_hook().submit(op.application)

        return op._staged(context, submit)

    def _staged(self, context, submit) -> dict | None:
        import importlib

        from airflow.sdk.exceptions import AirflowFailException

        from core.dagconf import target_date
        from core.lake import Lake

        sf = importlib.import_module(self.job_module)
        day = target_date(context.get("logical_date"))
        # arguments the task was given (templated, e.g. a path from an upstream XCom) come first
        self.application_args = [*(self.application_args or []), self.date_flag, day.isoformat()]
        lake = Lake()
        sf.clear_error(lake, day)
        try:
            submit()
        except Exception as exc:
            err = self.read_record(sf, lake, day, sf.ERROR_NAME)
            if err:
                raise AirflowFailException(f"{err['error']}: {err['message']}") from exc
            raise
        return self.read_record(sf, lake, day, sf.RESULT_NAME)


class DailyFactsSubmitOperator(StagedSparkSubmitOperator):
    """spark-submit of the ETL's fact job for the run's UTC date (``--date`` set at execution)."""

    job_application = APPLICATION
    job_name = "daily-etl-facts"
    date_flag = "--date"
    job_module = "etl.spark_facts"
    reads_lake = True   # the raw partition (read_raw)

    @staticmethod
    def read_record(sf, lake, day, name: str) -> dict | None:
        """The staged record ``name`` (``facts_result`` / ``facts_error``) of ``day``:
        :func:`etl.spark_facts.read_json`, a ``<name>.parquet`` under ``features/staging/daily_etl/date=<day>/``;
        None when absent."""
        return sf.read_json(lake, day, name)


class EtlLoadedSensor(BaseSensorOperator):
    """Holds a training or prediction run until daily_etl has loaded and reconciled the UTC date the run processes
    (:func:`core.dagconf.target_date` of its logical date): :func:`etl.star_schema.etl_load_status`, the latest
    ``etl_runs`` row of that date is a success. Without it, a run started before that night's ETL (an ETL running
    late, retried or failed) went on with the history up to the day before and succeeded.

    Reschedule mode (the worker slot and the ClickHouse pool slot are free between pokes): poke every
    ``poke_interval`` s (default 600), give up after ``timeout`` s (default 12 h) with an ``AirflowSensorTimeout``
    naming the date and what etl_runs holds for it. A run without a logical date (``batch_predictions`` triggered by
    the ``demand_forecast_champion`` asset: the training run that emitted it already waited) passes at once.
    """

    def __init__(self, **kwargs):
        import datetime as dt

        from core.dagconf import CLICKHOUSE_POOL

        kwargs.setdefault("mode", "reschedule")
        kwargs.setdefault("poke_interval", 600)
        kwargs.setdefault("timeout", dt.timedelta(hours=12).total_seconds())
        kwargs.setdefault("pool", CLICKHOUSE_POOL)
        super().__init__(**kwargs)
        self._why = ""

    def poke(self, context) -> bool:
        """True when the run's date is loaded (or the run has no logical date); logs why it waits otherwise."""
        from core.dagconf import target_date
        from etl.star_schema import etl_load_status

        if context.get("logical_date") is None:
            self.log.info("no logical date (asset-triggered run): the triggering run waited for daily_etl")
            return True
        ok, self._why = etl_load_status(target_date(context["logical_date"]))
        self.log.info("%s", self._why if ok else f"waiting for daily_etl: {self._why}")
        return ok

    def execute(self, context):
        """:meth:`BaseSensorOperator.execute`; on time-out the error names the date and what etl_runs holds.

        Raises:
            AirflowSensorTimeout: the date was not loaded within ``timeout``.
        """
        from airflow.sdk.exceptions import AirflowSensorTimeout

        try:
            return super().execute(context)
        except AirflowSensorTimeout as exc:
            raise AirflowSensorTimeout(f"daily_etl did not load the run's date within {self.timeout:.0f} s: "
                                       f"{self._why}. Run or repair daily_etl for it, then clear this task") from exc
