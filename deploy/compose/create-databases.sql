-- The API's inference log lives beside the MLflow database, in its own database.
CREATE DATABASE inference;
