import AWSCore

/// Reads parameters out of EC2 user-data (or a `--config` file) in any of the forms the daemon accepts:
///
/// - `key=value` lines (`#` comments, blank lines and surrounding spaces ignored): aws-parallelizer's form;
/// - a JSON object of scalars;
/// - a `#cloud-config` document whose `parallelizer:` map holds flat `key: value` scalars, so one user-data both
///   installs the daemon and configures it (only that flat subset is read; no YAML library). The map is the
///   content of the `write_files` entry for `/etc/parallelizer/parameters.yaml` (what `fleet launch` writes: a
///   key cloud-init does not know would fail its schema check from cloud-init 24 on), or else a top-level key;
/// - MIME multipart user-data, with one of those forms as a part.
public enum UserData {
    public struct ParseError: Error, Sendable, CustomStringConvertible, Equatable {
        public var message: String
        public var description: String { message }
    }

    /// The parameters, by name as written. Throws when the text is in none of the forms, or malformed in its form.
    public static func parse(_ text: String) throws(ParseError) -> [String: String] {
        let trimmed = text.trimmingSpaces
        if trimmed.isEmpty { return [:] }
        if trimmed.hasPrefix("{") { return try parseJSON(trimmed) }
        if trimmed.hasPrefix("#cloud-config") { return try parseCloudConfig(text) }
        if let boundary = mimeBoundary(text) { return try parseMultipart(text, boundary: boundary) }
        if trimmed.hasPrefix("#!") {
            throw ParseError(message: "user-data is a shell script, not parallelizer parameters")
        }
        return try parseKeyValue(text)
    }

    // MARK: - key=value

    static func parseKeyValue(_ text: String) throws(ParseError) -> [String: String] {
        var result: [String: String] = [:]
        for (number, raw) in lines(text).enumerated() {
            let line = raw.trimmingSpaces
            if line.isEmpty || line.hasPrefix("#") { continue }
            guard let eq = line.firstIndex(of: "=") else {
                throw ParseError(message: "line \(number + 1) is not key=value: '\(preview(line))'")
            }
            let key = String(line[..<eq]).trimmingSpaces
            guard isValidKey(key) else {
                throw ParseError(message: "line \(number + 1) has no valid key: '\(preview(line))'")
            }
            result[key] = unquote(String(line[line.index(after: eq)...]).trimmingSpaces)
        }
        return result
    }

    // MARK: - JSON

    static func parseJSON(_ text: String) throws(ParseError) -> [String: String] {
        let value: JSONValue
        do { value = try JSONValue.parse(text) } catch {
            throw ParseError(message: "user-data looks like JSON but does not parse")
        }
        guard let object = value.objectValue else { throw ParseError(message: "user-data JSON is not an object") }
        var result: [String: String] = [:]
        for (key, item) in object {
            switch item {
            case .string(let s): result[key] = s
            case .bool(let b): result[key] = b ? "true" : "false"
            case .number(let n): result[key] = n == n.rounded() && abs(n) < 1e15 ? String(Int(n)) : String(n)
            case .null: continue
            case .array, .object: throw ParseError(message: "user-data JSON key '\(key)' is not a scalar")
            }
        }
        return result
    }

    // MARK: - #cloud-config

    /// Where `fleet launch` puts the parameters: a file cloud-init writes, which operators can read on the instance.
    public static let parametersPath = "/etc/parallelizer/parameters.yaml"

    /// Reads the `parallelizer:` map from the `write_files` entry for `parametersPath` when there is one, else from
    /// the top level.
    static func parseCloudConfig(_ text: String) throws(ParseError) -> [String: String] {
        guard let (content, firstLine) = try writtenFile(parametersPath, in: text) else {
            return try parseTopLevelMap(text)
        }
        do {
            return try parseTopLevelMap(content, lineOffset: firstLine)
        } catch {
            throw ParseError(message: "in the write_files entry for \(parametersPath): \(error.message)")
        }
    }

    /// The `content: |` block of the top-level `write_files` item whose `path` is `path`, its indentation removed,
    /// with the line it starts after; nil when there is no such item. An item for the path that holds its content
    /// in another form (quoted, folded, base64: what a YAML tool may write when it rewrites the document) is an
    /// error, not a reason to read a top-level map instead.
    static func writtenFile(_ path: String, in text: String) throws(ParseError) -> (String, Int)? {
        let all = lines(text).map { stripYAMLComment($0) }
        func indent(_ line: Substring) -> Int { line.prefix { $0 == " " }.count }
        func blank(_ line: Substring) -> Bool { line.trimmingSpaces.isEmpty }
        guard let list = all.firstIndex(where: { indent($0) == 0 && $0.trimmingSpaces == "write_files:" }) else {
            return nil
        }
        // The list's lines: to the next top-level key.
        var listEnd = list + 1
        while listEnd < all.count, blank(all[listEnd]) || indent(all[listEnd]) > 0 || all[listEnd].hasPrefix("-") {
            listEnd += 1
        }
        let dashes = (list + 1..<listEnd).filter { all[$0].trimmingSpaces.hasPrefix("-") }
        guard let first = dashes.first else { return nil }
        let dashIndent = indent(all[first])
        let items = dashes.filter { indent(all[$0]) == dashIndent }
        for (n, start) in items.enumerated() {
            let end = n + 1 < items.count ? items[n + 1] : listEnd
            // The item's keys: the text after its dash, and the lines at that text's indentation.
            let afterDash = all[start].dropFirst(dashIndent + 1)
            let keyIndent = dashIndent + 1 + afterDash.prefix { $0 == " " }.count
            var keys: [(line: Int, key: String, value: String)] = []
            for index in start..<end where !blank(all[index]) {
                let line = index == start ? afterDash : all[index]
                guard index == start || indent(all[index]) == keyIndent else { continue }
                let trimmed = line.trimmingSpaces
                guard let colon = trimmed.firstIndex(of: ":") else { continue }
                keys.append(
                    (index, String(trimmed[..<colon]), String(trimmed[trimmed.index(after: colon)...]).trimmingSpaces))
            }
            guard keys.contains(where: { $0.key == "path" && unquote($0.value) == path }) else { continue }
            guard let content = keys.first(where: { $0.key == "content" }),
                content.value.hasPrefix("|"), !keys.contains(where: { $0.key == "encoding" })
            else {
                throw ParseError(
                    message:
                        "the write_files entry for \(path) must hold its map as a literal block (content: |), as fleet launch writes it"
                )
            }
            var block: [Substring] = []
            var index = content.line + 1
            while index < end, blank(all[index]) || indent(all[index]) > keyIndent {
                block.append(all[index])
                index += 1
            }
            let margin = block.filter { !blank($0) }.map(indent).min() ?? 0
            return (
                block.map { blank($0) ? "" : String($0.dropFirst(margin)) }.joined(separator: "\n"), content.line + 1
            )
        }
        return nil
    }

    /// Finds the top-level `parallelizer:` key and reads the indented `key: value` lines under it. Line numbers in
    /// errors are counted from `lineOffset` lines before the text.
    static func parseTopLevelMap(_ text: String, lineOffset: Int = 0) throws(ParseError) -> [String: String] {
        var result: [String: String] = [:]
        var inside = false
        var found = false
        var indent: Int?
        for (number, raw) in lines(text).enumerated() {
            let withoutComment = stripYAMLComment(raw)
            if withoutComment.trimmingSpaces.isEmpty { continue }
            let leading = withoutComment.prefix { $0 == " " || $0 == "\t" }.count
            if leading == 0 {
                inside = withoutComment.trimmingSpaces == "parallelizer:"
                if inside {
                    found = true
                    indent = nil
                }
                if !inside, withoutComment.hasPrefix("parallelizer:") {
                    throw ParseError(
                        message: "line \(number + 1 + lineOffset): 'parallelizer:' must be a map of key: value lines")
                }
                continue
            }
            guard inside else { continue }
            if indent == nil { indent = leading }
            guard leading == indent else {
                throw ParseError(
                    message:
                        "line \(number + 1 + lineOffset): only flat 'key: value' lines are read under 'parallelizer:'")
            }
            let line = withoutComment.trimmingSpaces
            guard let colon = line.firstIndex(of: ":") else {
                throw ParseError(message: "line \(number + 1 + lineOffset) under 'parallelizer:' is not 'key: value'")
            }
            let key = String(line[..<colon]).trimmingSpaces
            let value = String(line[line.index(after: colon)...]).trimmingSpaces
            guard isValidKey(key) else { throw ParseError(message: "line \(number + 1 + lineOffset) has no valid key") }
            if value.hasPrefix("|") || value.hasPrefix(">") || value.hasPrefix("[") || value.hasPrefix("{") {
                throw ParseError(message: "line \(number + 1 + lineOffset): '\(key)' must be a plain scalar")
            }
            result[key] = try yamlScalar(value, line: number + 1 + lineOffset)
        }
        guard found else { throw ParseError(message: "#cloud-config user-data has no top-level 'parallelizer:' map") }
        return result
    }

    /// Drops a ` #` comment that is not inside quotes.
    static func stripYAMLComment(_ line: Substring) -> Substring {
        var quote: Character?
        var previous: Character = " "
        for index in line.indices {
            let ch = line[index]
            if let q = quote {
                if ch == q { quote = nil }
            } else if ch == "\"" || ch == "'" {
                quote = ch
            } else if ch == "#" && (previous == " " || previous == "\t" || index == line.startIndex) {
                return line[..<index]
            }
            previous = ch
        }
        return line
    }

    // MARK: - MIME multipart

    static func mimeBoundary(_ text: String) -> String? {
        for raw in lines(text).prefix(20) {
            let line = raw.trimmingSpaces
            guard line.lowercased().hasPrefix("content-type:"), line.lowercased().contains("multipart/"),
                let range = line.range(ofCaseInsensitive: "boundary=")
            else { continue }
            var boundary = String(line[range.upperBound...])
            if let semi = boundary.firstIndex(of: ";") { boundary = String(boundary[..<semi]) }
            return unquote(boundary.trimmingSpaces)
        }
        return nil
    }

    /// Tries each part in order and returns the first that holds parallelizer parameters.
    static func parseMultipart(_ text: String, boundary: String) throws(ParseError) -> [String: String] {
        let marker = "--" + boundary
        var parts: [String] = []
        var current: [Substring]?
        for line in lines(text) {
            let trimmed = line.trimmingSpaces
            if trimmed == marker || trimmed == marker + "--" {
                if let current { parts.append(current.joined(separator: "\n")) }
                current = trimmed == marker ? [] : nil
                continue
            }
            current?.append(line)
        }
        var lastError: ParseError?
        for part in parts {
            // Headers end at the first blank line.
            let partLines = lines(part)
            guard let blank = partLines.firstIndex(where: { $0.trimmingSpaces.isEmpty }) else { continue }
            let headers = partLines[..<blank].map { $0.lowercased() }
            if headers.contains(where: { $0.contains("content-transfer-encoding") && $0.contains("base64") }) {
                lastError = ParseError(message: "base64-encoded MIME parts are not supported; send the part as text")
                continue
            }
            let body = partLines[(blank + 1)...].joined(separator: "\n")
            if body.trimmingSpaces.hasPrefix("#!") { continue }  // a shell script part, for cloud-init
            do {
                let parsed = try parse(body)
                if !parsed.isEmpty { return parsed }
            } catch {
                lastError = error
            }
        }
        throw lastError ?? ParseError(message: "no MIME part of the user-data holds parallelizer parameters")
    }

    // MARK: - Helpers

    static func lines(_ text: String) -> [Substring] {
        text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" || $0 == "\r" })
    }

    static func isValidKey(_ key: String) -> Bool {
        !key.isEmpty && key.allSatisfy { $0.isLetter || $0.isNumber || $0 == "_" || $0 == "-" || $0 == "." }
    }

    /// A YAML flow scalar as cloud-init would read it: 'single' quotes with `''` for a quote, "double" quotes with
    /// backslash escapes, or plain. fleet launch writes every value single-quoted, so any command survives.
    static func yamlScalar(_ value: String, line: Int) throws(ParseError) -> String {
        guard let first = value.first, first == "'" || first == "\"" else { return value }
        var result = ""
        var index = value.index(after: value.startIndex)
        while index < value.endIndex {
            let ch = value[index]
            let next = value.index(after: index)
            if ch == first {
                if first == "'", next < value.endIndex, value[next] == "'" {
                    result.append("'")
                    index = value.index(after: next)
                    continue
                }
                guard value[next...].allSatisfy({ $0 == " " || $0 == "\t" }) else { break }
                return result
            }
            if first == "\"", ch == "\\", next < value.endIndex {
                switch value[next] {
                case "n": result.append("\n")
                case "t": result.append("\t")
                case "\\", "\"", "/": result.append(value[next])
                default:
                    throw ParseError(message: "line \(line): unsupported escape '\\\(value[next])' in a quoted value")
                }
                index = value.index(after: next)
                continue
            }
            result.append(ch)
            index = next
        }
        throw ParseError(message: "line \(line): a quoted value is not closed, or has text after its closing quote")
    }

    static func unquote(_ value: String) -> String {
        if value.count >= 2, let first = value.first, first == "\"" || first == "'", value.last == first {
            return String(value.dropFirst().dropLast())
        }
        return value
    }

    static func preview(_ line: String) -> String { line.count > 60 ? String(line.prefix(60)) + "…" : line }
}

extension StringProtocol {
    func range(ofCaseInsensitive needle: String) -> Range<Index>? {
        let lowered = self.lowercased()
        guard let r = lowered.firstRange(of: needle.lowercased()) else { return nil }
        // Lowercasing ASCII keeps offsets; map them back.
        let start = index(startIndex, offsetBy: lowered.distance(from: lowered.startIndex, to: r.lowerBound))
        let end = index(start, offsetBy: lowered.distance(from: r.lowerBound, to: r.upperBound))
        return start..<end
    }
}
