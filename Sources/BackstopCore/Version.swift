public enum Backstop { public static let version = "0.1.0" }
