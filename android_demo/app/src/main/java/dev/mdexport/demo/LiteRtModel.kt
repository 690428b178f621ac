package dev.mdexport.demo

import dev.mdexport.core.BundleException
import dev.mdexport.core.FloatTensor
import dev.mdexport.core.IntTensor
import dev.mdexport.core.Model
import dev.mdexport.core.ModelSpec
import dev.mdexport.core.Tensor
import java.io.Closeable
import java.io.File
import java.io.FileInputStream
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.channels.FileChannel
import org.tensorflow.lite.DataType
import org.tensorflow.lite.Interpreter
import org.tensorflow.lite.gpu.CompatibilityList
import org.tensorflow.lite.gpu.GpuDelegate

/**
 * One bundle model run through its LiteRT signature runner (signature name and input/output
 * names from manifest.json). Inputs are converted to the dtype the .tflite tensor really has.
 */
class LiteRtModel private constructor(
    private val spec: ModelSpec,
    private val interpreter: Interpreter,
    private val gpu: GpuDelegate?,
) : Model, Closeable {
    /** "GPU" or "CPU": what this model actually runs on. */
    val backend: String get() = if (gpu != null) "GPU" else "CPU"

    private val outputBuffers = HashMap<String, ByteBuffer>()

    init {
        val keys = interpreter.signatureKeys.toList()
        if (spec.signature !in keys) {
            throw BundleException("${spec.file}: no signature \"${spec.signature}\" (has: ${keys.joinToString().ifEmpty { "none" }})")
        }
        val ins = interpreter.getSignatureInputs(spec.signature).toSet()
        val outs = interpreter.getSignatureOutputs(spec.signature).toSet()
        for (t in spec.inputs) if (t.name !in ins) {
            throw BundleException("${spec.file}: signature \"${spec.signature}\" has no input \"${t.name}\" (has: ${ins.joinToString()})")
        }
        for (t in spec.outputs) if (t.name !in outs) {
            throw BundleException("${spec.file}: signature \"${spec.signature}\" has no output \"${t.name}\" (has: ${outs.joinToString()})")
        }
    }

    override fun run(inputs: Map<String, Tensor>): Map<String, FloatTensor> {
        val feeds = HashMap<String, Any>()
        for ((name, value) in inputs) {
            val t = interpreter.getInputTensorFromSignature(name, spec.signature)
            if (!t.shape().contentEquals(value.shape)) {
                throw BundleException(
                    "${spec.file}: input \"$name\" has shape ${t.shape().toList()} in the model, the app feeds ${value.shape.toList()}"
                )
            }
            feeds[name] = toBuffer(name, value, t.dataType())
        }
        val outs = HashMap<String, Any>()
        for (o in spec.outputs) {
            val t = interpreter.getOutputTensorFromSignature(o.name, spec.signature)
            if (t.dataType() != DataType.FLOAT32) {
                throw BundleException("${spec.file}: output \"${o.name}\" is ${t.dataType()}, the app reads float32")
            }
            val buf = outputBuffers.getOrPut(o.name) { ByteBuffer.allocateDirect(t.numBytes()).order(ByteOrder.nativeOrder()) }
            buf.rewind()
            outs[o.name] = buf
        }
        interpreter.runSignature(feeds, outs, spec.signature)
        val result = HashMap<String, FloatTensor>()
        for (o in spec.outputs) {
            val t = interpreter.getOutputTensorFromSignature(o.name, spec.signature)
            val buf = outputBuffers.getValue(o.name)
            buf.rewind()
            val data = FloatArray(t.numElements())
            buf.asFloatBuffer().get(data)
            result[o.name] = FloatTensor(t.shape(), data)
        }
        return result
    }

    private fun toBuffer(name: String, value: Tensor, type: DataType): ByteBuffer {
        val n = value.size
        fun alloc(bytesPer: Int) = ByteBuffer.allocateDirect(n * bytesPer).order(ByteOrder.nativeOrder())
        return when (type) {
            DataType.FLOAT32 -> alloc(4).also { b ->
                val fb = b.asFloatBuffer()
                when (value) {
                    is FloatTensor -> fb.put(value.data)
                    is IntTensor -> for (v in value.data) fb.put(v.toFloat())
                }
            }
            DataType.INT32 -> alloc(4).also { b ->
                val ib = b.asIntBuffer()
                when (value) {
                    is IntTensor -> ib.put(value.data)
                    is FloatTensor -> for (v in value.data) ib.put(Math.round(v))
                }
            }
            DataType.INT64 -> alloc(8).also { b ->
                val lb = b.asLongBuffer()
                when (value) {
                    is IntTensor -> for (v in value.data) lb.put(v.toLong())
                    is FloatTensor -> for (v in value.data) lb.put(Math.round(v.toDouble()))
                }
            }
            else -> throw BundleException("${spec.file}: input \"$name\" is $type; the app feeds float32, int32 or int64")
        }
    }

    override fun close() {
        interpreter.close()
        gpu?.close()
    }

    companion object {
        private val threads = Runtime.getRuntime().availableProcessors().coerceIn(1, 4)

        /**
         * Loads [spec]'s file from [location]. With [useGpu], tries the GPU delegate first and falls
         * back to the CPU (XNNPACK) when the device or the model's ops are not supported.
         */
        fun load(location: BundleLocation, spec: ModelSpec, useGpu: Boolean): LiteRtModel {
            if (spec.format != "tflite") throw BundleException("manifest.json: models.${spec.key}.format is \"${spec.format}\", expected \"tflite\"")
            if (useGpu) {
                var delegate: GpuDelegate? = null
                try {
                    val supported = CompatibilityList().use { compat ->
                        if (compat.isDelegateSupportedOnThisDevice) {
                            delegate = GpuDelegate(compat.bestOptionsForThisDevice)
                            true
                        } else false
                    }
                    if (supported) {
                        val opts = Interpreter.Options().setNumThreads(threads).addDelegate(delegate!!)
                        return LiteRtModel(spec, open(location, spec, opts), delegate)
                    }
                } catch (e: BundleException) {
                    delegate?.close()
                    throw e
                } catch (e: Throwable) {
                    // GPU delegate rejected the model (unsupported op, rank > 4, ...): fall back to the CPU.
                    delegate?.close()
                }
            }
            val opts = Interpreter.Options().setNumThreads(threads)
            return LiteRtModel(spec, open(location, spec, opts), null)
        }

        private fun open(location: BundleLocation, spec: ModelSpec, opts: Interpreter.Options): Interpreter = when (location) {
            // A path lets the runtime mmap files over 2 GB (a full fp32 SD 1.5 UNet is ~3.4 GB).
            is BundleLocation.Directory -> Interpreter(File(location.dir, spec.file), opts)
            is BundleLocation.Assets -> {
                val fd = try {
                    location.files.openFd(spec.file)
                } catch (e: java.io.IOException) {
                    throw BundleException(
                        "assets/${BundleLocator.ASSET_FOLDER}/${spec.file} cannot be memory-mapped (missing, compressed, or over 2 GB); " +
                            "push the bundle to the app's files dir instead"
                    )
                }
                fd.use {
                    FileInputStream(it.fileDescriptor).channel.use { ch ->
                        Interpreter(ch.map(FileChannel.MapMode.READ_ONLY, it.startOffset, it.declaredLength), opts)
                    }
                }
            }
        }
    }
}
