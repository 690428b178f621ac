package dev.mdexport.core

/** A dense row-major tensor handed to and returned from a [Model]. */
sealed class Tensor(shape: IntArray) {
    val shape: IntArray = shape.copyOf()
    val size: Int get() = shape.fold(1) { a, b -> a * b }
    fun shapeString(): String = shape.joinToString(", ", "[", "]")
}

class FloatTensor(shape: IntArray, val data: FloatArray) : Tensor(shape) {
    init {
        require(data.size == size) { "FloatTensor data has ${data.size} values, shape ${shapeString()} needs $size" }
    }

    constructor(vararg shape: Int) : this(shape, FloatArray(shape.fold(1) { a, b -> a * b }))

    /** Row [index] along the first axis, as a tensor of shape [1, ...]. */
    fun row(index: Int): FloatTensor {
        val n = size / shape[0]
        return FloatTensor(intArrayOf(1, *shape.copyOfRange(1, shape.size)), data.copyOfRange(index * n, (index + 1) * n))
    }

    companion object {
        /** Stacks tensors of shape [1, ...] along the first axis. */
        fun concat(parts: List<FloatTensor>): FloatTensor {
            require(parts.isNotEmpty())
            val rest = parts[0].shape.copyOfRange(1, parts[0].shape.size)
            var batch = 0
            for (p in parts) {
                require(p.shape.copyOfRange(1, p.shape.size).contentEquals(rest)) {
                    "cannot concatenate ${p.shapeString()} with ${parts[0].shapeString()}"
                }
                batch += p.shape[0]
            }
            val out = FloatArray(parts.sumOf { it.size })
            var off = 0
            for (p in parts) { p.data.copyInto(out, off); off += p.size }
            return FloatTensor(intArrayOf(batch, *rest), out)
        }
    }
}

class IntTensor(shape: IntArray, val data: IntArray) : Tensor(shape) {
    init {
        require(data.size == size) { "IntTensor data has ${data.size} values, shape ${shapeString()} needs $size" }
    }
}

/**
 * One exported component (text encoder, UNet, VAE decoder) behind the names of
 * docs/bundle-format.md. The Android app implements it with a LiteRT signature runner;
 * tests implement it with fakes.
 */
fun interface Model {
    fun run(inputs: Map<String, Tensor>): Map<String, FloatTensor>
}
