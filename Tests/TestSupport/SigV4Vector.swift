import AWSCore
import FoundationEssentials
import Glibc

/// One case of AWS's SigV4 test suite, read from `../shared/testdata/sigv4` (see its README for the layout).
public struct SigV4Vector: Sendable, CustomStringConvertible {
    public enum Layout: Sendable { case v4, legacy }

    public struct ParsedRequest: Sendable {
        public var method: String
        /// Everything between the method and ` HTTP/1.1`, raw.
        public var target: String
        public var headers: [(String, String)]
        public var body: [UInt8]

        public var path: String {
            target.firstIndex(of: "?").map { String(target[..<$0]) } ?? target
        }
        public var rawQuery: String {
            target.firstIndex(of: "?").map { String(target[target.index(after: $0)...]) } ?? ""
        }
        /// The header section exactly as the file has it (folded lines included), for rebuilding signed requests.
        public var headerLines: [String]
    }

    public let name: String
    public let layout: Layout
    public let directory: String
    public let request: ParsedRequest
    public let accessKeyID: String
    public let secretAccessKey: String
    public let sessionToken: String?
    public let omitSessionToken: Bool
    public let normalize: Bool
    public let signBody: Bool
    public let region: String
    public let service: String
    public let timestamp: Date
    public let expiresIn: Int

    public var description: String { "\(layout == .v4 ? "v4" : "legacy")/\(name)" }

    public func expected(_ file: String) -> String? { readText("\(directory)/\(file)") }

    // MARK: - Loading

    /// `../shared/testdata/sigv4`, found from this source file so it works from any working directory.
    public static var root: String {
        var parts = #filePath.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        // .../<repo>/Tests/TestSupport/SigV4Vector.swift -> .../shared/testdata/sigv4
        parts.removeLast(4)
        return parts.joined(separator: "/") + "/shared/testdata/sigv4"
    }

    public static let all: [SigV4Vector] = v4 + legacy

    public static let v4: [SigV4Vector] = {
        listDirectory("\(root)/v4").sorted().compactMap { loadV4(name: $0, directory: "\(root)/v4/\($0)") }
    }()

    /// The older botocore suite. Cases live one or two levels down (`normalize-path/get-space/get-space.req`).
    public static let legacy: [SigV4Vector] = {
        var result: [SigV4Vector] = []
        func walk(_ dir: String, prefix: String) {
            for entry in listDirectory(dir).sorted() {
                let path = "\(dir)/\(entry)"
                if readText("\(path)/\(entry).req") != nil {
                    if let v = loadLegacy(name: prefix + entry, directory: path, stem: entry) { result.append(v) }
                } else if isDirectory(path) {
                    walk(path, prefix: prefix + entry + "/")
                }
            }
        }
        walk("\(root)/aws4_testsuite", prefix: "")
        return result
    }()

    struct Context: Decodable {
        struct Creds: Decodable {
            var access_key_id: String
            var secret_access_key: String
            var token: String?
        }
        var credentials: Creds
        var expiration_in_seconds: Int
        var normalize: Bool
        var region: String
        var service: String
        var sign_body: Bool
        var timestamp: String
        var omit_session_token: Bool?
    }

    static func loadV4(name: String, directory: String) -> SigV4Vector? {
        guard let contextText = readText("\(directory)/context.json"),
            let requestText = readText("\(directory)/request.txt"),
            let context = try? JSONDecoder().decode(Context.self, from: Data(contextText.utf8)),
            let seconds = parseISO(context.timestamp)
        else { return nil }
        return SigV4Vector(
            name: name, layout: .v4, directory: directory, request: parseRequest(requestText),
            accessKeyID: context.credentials.access_key_id, secretAccessKey: context.credentials.secret_access_key,
            sessionToken: context.credentials.token, omitSessionToken: context.omit_session_token ?? false,
            normalize: context.normalize, signBody: context.sign_body, region: context.region, service: context.service,
            timestamp: Date(timeIntervalSince1970: TimeInterval(seconds)), expiresIn: context.expiration_in_seconds)
    }

    static func loadLegacy(name: String, directory: String, stem: String) -> SigV4Vector? {
        guard let text = readText("\(directory)/\(stem).req") else { return nil }
        var request = parseRequest(text)
        // The legacy requests carry their own X-Amz-Date (and, for token cases, the token header); the signer adds
        // both itself, so they move from the request into the signing inputs.
        var token: String?
        request.headers.removeAll { name, value in
            if name.lowercased() == "x-amz-security-token" {
                token = value
                return true
            }
            return name.lowercased() == "x-amz-date"
        }
        request.headerLines.removeAll {
            let lower = $0.lowercased()
            return lower.hasPrefix("x-amz-date:") || lower.hasPrefix("x-amz-security-token:")
        }
        // Where the token is not in the request, it is in the expected canonical request (signed) or only in the
        // signed request (added after signing, as in post-sts-header-after).
        func headerValue(_ file: String?, _ name: String) -> String? {
            file?.split(separator: "\n").first { $0.lowercased().hasPrefix(name + ":") }
                .map { String($0.drop { $0 != ":" }.dropFirst()) }
        }
        let creq = readText("\(directory)/\(stem).creq")
        var omit = false
        if token == nil, let signed = headerValue(creq, "x-amz-security-token") { token = signed }
        if token == nil, let after = headerValue(readText("\(directory)/\(stem).sreq"), "x-amz-security-token") {
            token = after
            omit = true
        }
        return SigV4Vector(
            name: name, layout: .legacy, directory: directory, request: request,
            accessKeyID: "AKIDEXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            sessionToken: token, omitSessionToken: omit, normalize: true, signBody: false,
            region: "us-east-1", service: "service", timestamp: Date(timeIntervalSince1970: 1_440_938_160),
            expiresIn: 3600)
    }

    public static func legacyFile(_ vector: SigV4Vector, _ ext: String) -> String? {
        let stem = vector.name.split(separator: "/").last.map(String.init) ?? vector.name
        return readText("\(vector.directory)/\(stem).\(ext)")
    }

    /// Parses the suite's request format: request line, `Name:value` headers with obs-fold, blank line, body.
    static func parseRequest(_ text: String) -> ParsedRequest {
        let (head, body): (Substring, Substring)
        if let range = text.firstRange(of: "\n\n") {
            head = text[..<range.lowerBound]
            body = text[range.upperBound...]
        } else {
            head = Substring(text.hasSuffix("\n") ? String(text.dropLast()) : text)
            body = ""
        }
        var lines = head.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        let requestLine = lines.removeFirst()
        let method = String(requestLine.prefix { $0 != " " })
        var target = String(requestLine.dropFirst(method.count + 1))
        if target.hasSuffix(" HTTP/1.1") { target.removeLast(" HTTP/1.1".count) }
        var headers: [(String, String)] = []
        for line in lines where !line.isEmpty {
            if line.first == " " || line.first == "\t", !headers.isEmpty {
                headers[headers.count - 1].1 += " " + String(line.drop { $0 == " " || $0 == "\t" })
            } else if let colon = line.firstIndex(of: ":") {
                headers.append((String(line[..<colon]), String(line[line.index(after: colon)...])))
            }
        }
        return ParsedRequest(
            method: method, target: target, headers: headers, body: Array(body.utf8),
            headerLines: lines.filter { !$0.isEmpty })
    }

    static func parseISO(_ text: String) -> Int64? {
        // 2015-08-30T12:36:00Z
        let digits = text.filter(\.isNumber)
        guard digits.count == 14 else { return nil }
        let d = Array(digits)
        func n(_ a: Int, _ b: Int) -> Int { Int(String(d[a..<b]))! }
        var t = tm()
        t.tm_year = Int32(n(0, 4) - 1900)
        t.tm_mon = Int32(n(4, 6) - 1)
        t.tm_mday = Int32(n(6, 8))
        t.tm_hour = Int32(n(8, 10))
        t.tm_min = Int32(n(10, 12))
        t.tm_sec = Int32(n(12, 14))
        return Int64(timegm(&t))
    }
}

// MARK: - Small file helpers (tests only)

public func readText(_ path: String) -> String? { LocalFile.readText(path) }

public func listDirectory(_ path: String) -> [String] { LocalFile.listDirectory(path) }

public func isDirectory(_ path: String) -> Bool {
    var st = stat()
    return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
}
