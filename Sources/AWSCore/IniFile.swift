/// The AWS shared config and credentials files: INI sections of `key = value`.
/// `~/.aws/credentials` names sections `[name]`; `~/.aws/config` names them `[profile name]`, except `[default]`.
public struct IniFile: Sendable {
    public var sections: [String: [String: String]]

    public init(text: String) {
        var sections: [String: [String: String]] = [:]
        var current: String?
        // A key with no value, followed by indented `key = value` lines: a nested group (`s3 =` then
        // `  endpoint_url = ...` in a `[services ...]` section), stored as `s3.endpoint_url`.
        var parent: String?
        for raw in text.split(whereSeparator: { $0 == "\n" || $0 == "\r" }) {
            let line = raw.trimmingSpaces
            if line.isEmpty || line.hasPrefix("#") || line.hasPrefix(";") { continue }
            if line.hasPrefix("["), line.hasSuffix("]") {
                let name = String(line.dropFirst().dropLast()).trimmingSpaces
                current = name
                parent = nil
                sections[name, default: [:]] = sections[name] ?? [:]
                continue
            }
            guard let section = current, let eq = line.firstIndex(of: "=") else { continue }
            let key = String(line[..<eq]).trimmingSpaces.lowercased()
            let value = String(line[line.index(after: eq)...]).trimmingSpaces
            let indented = raw.first == " " || raw.first == "\t"
            if indented, let parent {
                sections[section]?[parent + "." + key] = value
                continue
            }
            parent = value.isEmpty ? key : nil
            sections[section]?[key] = value
        }
        self.sections = sections
    }

    /// A profile from the credentials file.
    public func credentialsProfile(_ name: String) -> [String: String]? { sections[name] }

    /// A `[sso-session name]` section from the config file.
    public func ssoSession(_ name: String) -> [String: String]? { sections["sso-session \(name)"] }

    /// A `[services name]` section from the config file (per-service settings such as `s3.endpoint_url`).
    public func services(_ name: String) -> [String: String]? { sections["services \(name)"] }

    /// A profile from the config file.
    public func configProfile(_ name: String) -> [String: String]? {
        name == "default" ? (sections["default"] ?? sections["profile default"]) : sections["profile \(name)"]
    }
}

extension StringProtocol {
    /// Without leading and trailing spaces, tabs and line ends.
    public var trimmingSpaces: String {
        let isSpace: (Character) -> Bool = { $0.isWhitespace }
        guard let first = firstIndex(where: { !isSpace($0) }), let last = lastIndex(where: { !isSpace($0) }) else {
            return ""
        }
        return String(self[first...last])
    }
}
