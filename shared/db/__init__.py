"""Database access: models, the session helper, migrations."""
