/// Backstop's release: `version` is what `--version` prints and `status` reports as `daemon.version`.
public enum Backstop { public static let version = "0.1.0" }
