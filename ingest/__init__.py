"""Frame ingest: camera sources -> Kafka frames topic.

This is the most upstream package: the Kafka connection settings and the topic-naming
convention shared by every stage live here, next to the first code that uses them.
"""
