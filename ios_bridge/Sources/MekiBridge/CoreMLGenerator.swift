import CoreML
import Foundation

/// Generation over a Core ML export: one MLModel per step function (prefill, decode) of a
/// multifunction .mlpackage sharing one MLState (the KV cache), fed tokens, positions and the
/// MeKi rows looked up from the memory pack. Tokens arrive as an AsyncStream.
@available(iOS 18.0, macOS 15.0, *)
public final class CoreMLGenerator {
    public let manifest: BundleManifest
    public let backbone: BundleManifest.Backbone
    let models: [String: MLModel]
    let pack: MemoryPack?

    /// bundle: the folder holding manifest.json; target: the backbone's export target.
    public init(bundle: URL, target: String = "coreml", computeUnits: MLComputeUnits = .all) throws {
        manifest = try BundleManifest.verify(bundle, checkHashes: true)   // paths, symlinks, sizes, sha256, references
        backbone = try manifest.backbone(target)
        if let ref = manifest.memoryPack {
            let p = try MemoryPack(url: bundle.appendingPathComponent(ref.file), expectedFingerprint: manifest.fingerprint)
            try ref.check(p.header)   // the header must say what the manifest says
            pack = p
        } else {
            pack = nil
        }
        let compiled = try MLModel.compileModel(at: bundle.appendingPathComponent(backbone.file))
        var ms: [String: MLModel] = [:]
        for (step, spec) in backbone.methods {
            let cfg = MLModelConfiguration()
            cfg.computeUnits = computeUnits
            cfg.functionName = spec.entry ?? step
            ms[step] = try MLModel(contentsOf: compiled, configuration: cfg)
        }
        models = ms
    }

    /// Stream up to maxNewTokens token ids after prompt; ends at an eos id or max_seq_len.
    public func generate(prompt: [Int], maxNewTokens: Int) -> AsyncThrowingStream<Int, Error> {
        AsyncThrowingStream { continuation in
            let task = Task {
                do {
                    try await self.run(prompt: prompt, maxNewTokens: maxNewTokens) { continuation.yield($0) }
                    continuation.finish()
                } catch {
                    continuation.finish(throwing: error)
                }
            }
            continuation.onTermination = { _ in task.cancel() }
        }
    }

    func run(prompt: [Int], maxNewTokens: Int, emit: (Int) -> Void) async throws {
        guard let prefill = models["prefill"] else { throw BundleError("backbone has no prefill method") }
        guard !prompt.isEmpty, prompt.count < backbone.maxSeqLen else {
            throw BundleError("prompt has \(prompt.count) tokens; need 1..\(backbone.maxSeqLen - 1)")
        }
        let state = prefill.makeState()
        var logits: MLMultiArray?
        var start = 0
        while start < prompt.count {
            let chunk = Array(prompt[start..<min(start + backbone.prefillLen, prompt.count)])
            logits = try await step("prefill", chunk, from: start, state: state)
            start += chunk.count
        }
        var tok = argmax(logits!)
        var pos = prompt.count
        let eos = Set(manifest.tokenizer?.eosTokenIds ?? [])
        for n in 1...max(1, maxNewTokens) {
            emit(tok)
            if eos.contains(tok) || n == maxNewTokens || pos >= backbone.maxSeqLen || Task.isCancelled { break }
            tok = argmax(try await step("decode", [tok], from: pos, state: state))
            pos += 1
        }
    }

    /// One step: tokens [1, T], input_pos [T], meki_rows [1, T, L, m] (if the backbone takes them).
    func step(_ method: String, _ tokens: [Int], from pos: Int, state: MLState) async throws -> MLMultiArray {
        guard let model = models[method], let spec = backbone.methods[method] else {
            throw BundleError("backbone has no method '\(method)'")
        }
        let t = tokens.count
        var inputs: [String: MLFeatureValue] = [
            "tokens": MLFeatureValue(multiArray: try intArray(tokens, shape: [1, t])),
            "input_pos": MLFeatureValue(multiArray: try intArray(Array(pos..<(pos + t)), shape: [t])),
        ]
        if spec.input("meki_rows") != nil, let pack {
            let rows = try pack.lookup(tokens)
            let arr = try MLMultiArray(shape: [1, t, pack.header.numLayers, pack.header.dMem].map { NSNumber(value: $0) },
                                       dataType: .float32)
            arr.withUnsafeMutableBufferPointer(ofType: Float.self) { dst, _ in
                for i in 0..<rows.count { dst[i] = rows[i] }
            }
            inputs["meki_rows"] = MLFeatureValue(multiArray: arr)
        }
        let out = try await model.prediction(from: MLDictionaryFeatureProvider(dictionary: inputs), using: state)
        guard let name = spec.outputs.first?.name, let logits = out.featureValue(for: name)?.multiArrayValue else {
            throw BundleError("\(method): no logits output")
        }
        return logits
    }

    /// Core ML has no int64 arrays: token ids and positions go in as int32.
    func intArray(_ xs: [Int], shape: [Int]) throws -> MLMultiArray {
        let a = try MLMultiArray(shape: shape.map { NSNumber(value: $0) }, dataType: .int32)
        a.withUnsafeMutableBufferPointer(ofType: Int32.self) { dst, _ in
            for i in 0..<xs.count { dst[i] = Int32(xs[i]) }
        }
        return a
    }

    func argmax(_ a: MLMultiArray) -> Int {
        var best = 0
        var bestValue = -Float.infinity
        for i in 0..<a.count where a[i].floatValue > bestValue {
            best = i
            bestValue = a[i].floatValue
        }
        return best
    }
}
