"""The one schema: listing columns and rules, output record fields, DDL, and the Avro codec."""
