/// Writes the daemon's parameters as the `parallelizer:` map of a `#cloud-config` user-data, the form
/// `UserData.parse` reads back: the keys in their canonical spelling, every value single-quoted (`''` for a
/// quote), so that any command line survives cloud-init untouched. `fleet launch` renders through this
/// (`parallelizer config render`), so the keys, their validation and their quoting live in one place.
public enum UserDataRenderer {
    /// The map's lines for `settings` (key, value; a later key wins, in the first one's place), after checking them
    /// as the daemon would: unknown keys, bad values and missing required ones are refused here, before any
    /// instance starts. Returns the text and what the daemon will make of it.
    public static func render(_ settings: [(key: String, value: String)], over base: [String: String] = [:])
        throws(ConfigError)
        -> (text: String, config: WorkerConfig)
    {
        var order: [String] = []
        var values: [String: String] = [:]
        for (key, value) in base.sorted(by: { $0.key < $1.key }).map({ (key: $0.key, value: $0.value) }) + settings {
            guard let canonical = WorkerConfig.knownKeys[WorkerConfig.normalise(key)] else {
                throw ConfigError(key: key, message: "is not a parameter (docs/operations.md, Parameters)")
            }
            // Scalars, not Characters: "\r\n" is one Character, and YAML also breaks lines at U+0085, U+2028 and
            // U+2029, which would end the parameters file's block and lose the whole user-data to cloud-init.
            guard
                !value.unicodeScalars.contains(where: { scalar in
                    (scalar.value < 0x20 && scalar != "\t") || scalar.value == 0x7F || scalar == "\u{85}"
                        || scalar == "\u{2028}" || scalar == "\u{2029}"
                })
            else {
                throw ConfigError(
                    key: key, message: "has a line break or a control character; parameters are one line each")
            }
            if values[canonical] == nil { order.append(canonical) }
            values[canonical] = value
        }
        let (config, _) = try WorkerConfig.resolve([ConfigLayer(source: "--set", values: values)], cores: 1)
        let lines = ["parallelizer:"] + order.map { "  \($0): '\(values[$0]!.replacing("'", with: "''"))'" }
        return (lines.joined(separator: "\n") + "\n", config)
    }
}

extension WorkerConfig {
    /// A number the scripts need from the parameters (`config render --value`), as the daemon reads it: durations
    /// in seconds. Nil for a name it does not give.
    public func renderedValue(_ name: String) -> String? {
        switch WorkerConfig.knownKeys[WorkerConfig.normalise(name)] {
        case "shutdownGrace"?: return "\(shutdownGrace)"
        case "visibilityTimeout"?: return "\(visibilityTimeout)"
        case "taskTimeout"?: return taskTimeout.map { "\($0)" } ?? ""
        case "numThreads"?: return "\(numThreads)"
        case "maxAttempts"?: return "\(maxAttempts)"
        default: return nil
        }
    }
}
