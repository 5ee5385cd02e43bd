/// Capped exponential backoff with full jitter: attempt n waits a uniformly random time in [0, min(cap, base·2ⁿ)].
/// Full jitter spreads a fleet's retries out, so a throttled service is not hit by synchronized waves.
/// (https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/)
public struct RetryPolicy: Sendable {
    /// Total attempts, the first included.
    public var maxAttempts: Int
    public var baseDelay: Double
    public var maxDelay: Double
    /// Returns a uniform random number in [0, 1); injectable for tests.
    public var random: @Sendable () -> Double

    public init(maxAttempts: Int = 5, baseDelay: Double = 0.1, maxDelay: Double = 20,
                random: @escaping @Sendable () -> Double = { Double.random(in: 0..<1) }) {
        self.maxAttempts = maxAttempts
        self.baseDelay = baseDelay
        self.maxDelay = maxDelay
        self.random = random
    }

    /// Seconds to wait before retry number `retry` (1 for the first retry).
    public func delay(beforeRetry retry: Int) -> Double {
        let exponent = Double(min(retry - 1, 30))
        let ceiling = min(maxDelay, baseDelay * pow2(exponent))
        return ceiling * random()
    }

    private func pow2(_ e: Double) -> Double {
        var v = 1.0
        for _ in 0..<Int(e) { v *= 2 }
        return v
    }
}
