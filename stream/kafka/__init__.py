"""Kafka clients (connection settings, topics, reading and publishing) and the brokers the project runs."""
