"""spark-submit applications of the nightly ETL (``daily_facts.py``)."""
