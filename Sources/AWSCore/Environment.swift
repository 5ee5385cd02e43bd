@preconcurrency import Glibc

/// The process environment, read in one place. Everything else takes a `[String: String]`, so tests pass
/// dictionaries instead of mutating the real environment.
public enum ProcessEnvironment {
    public static func current() -> [String: String] {
        var result: [String: String] = [:]
        var pointer = environ
        while let entry = pointer.pointee {
            let text = String(cString: entry)
            if let eq = text.firstIndex(of: "=") {
                result[String(text[..<eq])] = String(text[text.index(after: eq)...])
            }
            pointer += 1
        }
        return result
    }
}

extension Dictionary where Key == String, Value == String {
    /// A variable's value, with empty treated as unset (as the AWS SDKs do).
    public func nonEmpty(_ name: String) -> String? {
        guard let value = self[name], !value.isEmpty else { return nil }
        return value
    }

    /// `true`/`1`/`yes` (any case).
    public func flag(_ name: String) -> Bool {
        guard let value = self[name]?.lowercased() else { return false }
        return ["true", "1", "yes", "on"].contains(value)
    }
}
