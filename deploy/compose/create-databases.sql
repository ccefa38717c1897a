-- Beside the MLflow database, each in its own database: the API's inference log, and the
-- feature store (Feast's registry, offline and online tables) that predictions by id read.
-- Run by the postgres image on its first start only: on an existing volume, create `features`
-- by hand (docs/deploy.md).
CREATE DATABASE inference;
CREATE DATABASE features;
