/// Where a service lives and how its requests are signed.
public struct ServiceEndpoint: Sendable, Equatable {
    /// The signing name (`s3`, `sqs`, `dynamodb`, `ec2`).
    public var service: String
    public var region: String
    /// `https` or `http`.
    public var scheme: String
    public var host: String
    public var port: Int?
    /// A path prefix from a custom endpoint URL (usually empty).
    public var basePath: String
    /// True when the endpoint came from `AWS_ENDPOINT_URL*` rather than AWS's own naming scheme.
    public var isCustom: Bool

    public init(service: String, region: String, url: String, isCustom: Bool) throws(AWSError) {
        guard let parsed = ParsedURL(url) else { throw AWSError.client(service, "bad endpoint URL '\(url)'") }
        self.service = service
        self.region = region
        self.scheme = parsed.scheme
        self.host = parsed.host
        self.port = parsed.port
        self.basePath = parsed.path == "/" ? "" : parsed.path
        self.isCustom = isCustom
    }

    /// `host` or `host:port` when the port is not the scheme's default: the value of the (signed) Host header.
    public var hostHeader: String {
        guard let port, !(scheme == "https" && port == 443), !(scheme == "http" && port == 80) else { return host }
        return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    public var origin: String { "\(scheme)://\(hostHeader)" }

    /// The endpoint for `service` in `region`, as the AWS CLI finds it (`configuredURL`), else AWS's own.
    public static func resolve(
        service: String, region: String, environment: [String: String], files: SharedConfigFiles? = nil
    ) throws(AWSError) -> ServiceEndpoint {
        if let url = configuredURL(service: service, environment: environment, files: files) {
            return try ServiceEndpoint(service: service, region: region, url: url, isCustom: true)
        }
        let suffix = region.hasPrefix("cn-") ? "amazonaws.com.cn" : "amazonaws.com"
        return try ServiceEndpoint(
            service: service, region: region, url: "https://\(service).\(region).\(suffix)",
            isCustom: false)
    }

    /// The service's identifier in `AWS_ENDPOINT_URL_<ID>` and in a `[services]` section (`auto_scaling` for
    /// Auto Scaling, whose signing name is `autoscaling`).
    static func identifier(_ service: String) -> String {
        service == "autoscaling" ? "auto_scaling" : String(service.map { $0 == "-" ? "_" : $0 })
    }

    /// An endpoint the operator configured, in the AWS CLI's order: `AWS_ENDPOINT_URL_<SERVICE>`,
    /// `AWS_ENDPOINT_URL`, the profile's `services` section, the profile's `endpoint_url`. None of the configuration's
    /// when `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS` is true.
    public static func configuredURL(
        service: String, environment: [String: String], files: SharedConfigFiles?
    ) -> String? {
        if environment.flag("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS") { return nil }
        let id = identifier(service)
        // Our own older spelling (`AUTOSCALING`) still counts.
        for name in [
            "AWS_ENDPOINT_URL_" + id.uppercased(), "AWS_ENDPOINT_URL_" + service.uppercased(), "AWS_ENDPOINT_URL",
        ] {
            if let url = environment.nonEmpty(name) { return url }
        }
        guard let files, let profile = files.config?.configProfile(files.profile) else { return nil }
        if let services = profile["services"].flatMap({ files.config?.services($0) }),
            let url = services[id + ".endpoint_url"], !url.isEmpty
        {
            return url
        }
        return profile["endpoint_url"].flatMap { $0.isEmpty ? nil : $0 }
    }
}

/// `scheme://host[:port][/path]`, enough for endpoints and queue URLs.
public struct ParsedURL: Sendable, Equatable {
    public var scheme: String
    public var host: String
    public var port: Int?
    /// The path, still encoded; `/` when empty.
    public var path: String

    public init?(_ text: String) {
        guard let sep = text.firstRange(of: "://") else { return nil }
        scheme = text[..<sep.lowerBound].lowercased()
        guard scheme == "http" || scheme == "https" else { return nil }
        var rest = text[sep.upperBound...]
        if let q = rest.firstIndex(where: { $0 == "?" || $0 == "#" }) { rest = rest[..<q] }
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        var authority = rest[..<slash]
        path = slash == rest.endIndex ? "/" : String(rest[slash...])
        if let at = authority.lastIndex(of: "@") { authority = authority[authority.index(after: at)...] }
        if authority.hasPrefix("["), let close = authority.firstIndex(of: "]") {
            host = String(authority[authority.index(after: authority.startIndex)..<close])
            let after = authority[authority.index(after: close)...]
            port = after.hasPrefix(":") ? Int(after.dropFirst()) : nil
        } else if let colon = authority.lastIndex(of: ":") {
            host = String(authority[..<colon])
            guard let p = Int(authority[authority.index(after: colon)...]), (1...65535).contains(p) else { return nil }
            port = p
        } else {
            host = String(authority)
            port = nil
        }
        guard !host.isEmpty else { return nil }
    }
}
