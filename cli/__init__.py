"""The command line: `podium` and its verbs (talks to a daemon through Pub/Sub and Firestore)."""
