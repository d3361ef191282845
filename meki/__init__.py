"""The application shell: the `meki` command and the demo. Stages live in pipeline/, training/."""
